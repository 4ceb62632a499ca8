"""What goes wrong with a results store on disk, as one error a user can act on, and read-only opening.

A store outlives the processes that write it: folders are copied to read-only archives, disks fill up, files get
truncated or overwritten. sqlite3 reports these as terse ``OperationalError``/``DatabaseError`` texts under a
traceback; the user needs the file, what is wrong, what to do, and to know that nothing stored was lost: every write
is one transaction, rolled back on error, and nothing here deletes, repairs or recreates an existing store.
"""

from __future__ import annotations

import errno
import shutil
import sqlite3
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Iterator

from medtransfer.errors import StoreError

MIN_FREE_BYTES = 1 << 20  # below this a run cannot write its checkpoint, log or predictions
READ_ONLY_HINT = "'results' and 'report' can still read it"
# (words of sqlite3's message, what it means for the user); the first match wins
_SQLITE_HINTS = (
    ("readonly", f"it is read-only (permissions, an immutable flag or a read-only mount); {READ_ONLY_HINT}"),
    ("unable to open", "the folder cannot be written or the file cannot be opened (permissions, an immutable "
                       f"flag or a read-only mount); {READ_ONLY_HINT}"),
    ("not a database", "it is not a SQLite database (corrupt, truncated or some other file); it is left as it is: "
                       "restore a copy, or move it away to start a new store"),
    ("malformed", "the database is corrupt; it is left as it is: restore a copy, or move it away to start anew"),
    ("disk is full", "the disk is full: free some space and run the same command again"),
    ("disk i/o", "the disk reported an I/O error (full, or failing): free some space or check the disk, then run "
                 "the same command again"),
    ("locked", "another process held its lock for longer than the timeout: run again when that one is done"),
)
_OS_HINTS = {
    errno.ENOSPC: "the disk is full: free some space and run the same command again",
    errno.EROFS: f"the file system is read-only; {READ_ONLY_HINT}",
    errno.EACCES: "permission denied",
    errno.EPERM: "not permitted (an immutable flag?)",
    errno.EEXIST: "a file has this name: pass a folder",
    errno.ENOTDIR: "a file is in the way: pass a folder",
}


@contextmanager
def store_errors(path: Path, action: str) -> Iterator[None]:
    """Turn sqlite3 and file-system errors inside the block into one StoreError naming ``path`` and ``action``."""
    try:
        yield
    except sqlite3.Error as err:
        text = str(err)
        hint = next((h for words, h in _SQLITE_HINTS if words in text.lower()), "see the SQLite message")
        raise StoreError(f"{path}: cannot {action} ({text}): {hint}; results stored so far are kept") from err
    except OSError as err:
        hint = _OS_HINTS.get(err.errno, err.strerror or type(err).__name__)
        raise StoreError(f"{err.filename or path}: cannot {action} ({hint}); results stored so far are kept") \
            from err


def read_only_uri(path: Path) -> str:
    """SQLite URI that never writes the database. ``mode=ro`` still needs the WAL index (``-shm``) beside the file,
    which it creates where the folder is writable and which live writers share; where the folder is read-only and
    none exists, ``immutable=1`` reads the file as a snapshot (nothing can be writing to such a folder)."""
    uri = f"{path.resolve().as_uri()}?mode=ro"
    try:
        with closing(sqlite3.connect(uri, uri=True)) as con:
            con.execute("PRAGMA user_version").fetchone()
    except sqlite3.OperationalError:  # "unable to open database file": no -shm, and none can be created
        return uri + "&immutable=1"
    except sqlite3.DatabaseError:  # not a database: reported by the caller's first read
        pass
    return uri


def stop_if_disk_full(folder: Path, err: BaseException) -> None:
    """Raise StoreError when a run failed and the experiment folder's disk is full: that is no fault of the run, and
    every later run of the grid would fail the same way. The free space decides, because the run's own error need
    not say ENOSPC (libraries wrap it in their own errors)."""
    free = shutil.disk_usage(folder).free
    if free < MIN_FREE_BYTES:
        first = (str(err).strip().splitlines() or [""])[0]
        raise StoreError(f"{folder}: the disk is full ({free} bytes left) and a run failed ({type(err).__name__}: "
                         f"{first}): free some space and run the same command again; results stored so far are "
                         "kept") from err
