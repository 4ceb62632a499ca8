"""The dataset cache: decoded splits as memory-mappable ``.npy`` files under ``<cache root>/datasets/<key>``.

Decoding thousands of images takes minutes; memory-mapping their decoded arrays takes milliseconds, and the pages
are shared by every process that maps them. An entry's key hashes what determines its arrays: the loader and its
decode options, each source file's path, size and modification time, and each file's split — so a changed, added
or removed file, or another ``size``, is another key, and a stale entry is never read.

An entry is written into a hidden staging folder beside it and renamed into place only when complete, so an
interrupted decode leaves no usable entry, and of two processes filling one key the first rename wins and the
other uses the winner's entry.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from medtransfer.cache import datasets_root
from medtransfer.errors import DataError

FORMAT = 1  # bump when decoding changes what an entry holds, so older entries are no longer found
MANIFEST = "manifest.json"
STAGING_PREFIX = ".staging-"


def canonical(value):
    """A JSON-able, process-independent form of loader options (partials by qualified name, not by address)."""
    if isinstance(value, functools.partial):
        return {"function": f"{value.func.__module__}.{value.func.__qualname__}", "args": canonical(value.args),
                "keywords": canonical(value.keywords)}
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{value.__module__}.{value.__qualname__}"
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot key a dataset cache entry on {type(value).__name__} {value!r}")


def fingerprint(path: Path) -> list:
    """(absolute path, size, mtime in ns) of a file; a folder (DICOM series) lists its files; a missing file is
    keyed as missing, so its later appearance changes the key."""
    path = Path(path).absolute()
    try:
        if path.is_dir():
            return [str(path), [fingerprint(child) for child in sorted(path.iterdir())]]
        stat = path.stat()
    except OSError:
        return [str(path), None, None]
    return [str(path), stat.st_size, stat.st_mtime_ns]


def entry_key(loader: str, options, files: Sequence[Sequence[Path]], splits: Sequence[str]) -> str:
    """The key of the decoded arrays of ``files`` (one list of source files per item, e.g. image + mask)."""
    payload = {"format": FORMAT, "loader": loader, "options": canonical(options),
               "items": [[split, [fingerprint(f) for f in item]] for item, split in zip(files, splits)]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


@dataclass(frozen=True)
class Entry:
    """A complete cache entry: per split, the item positions kept and named arrays; files skipped with reasons."""

    key: str
    indices: dict[str, np.ndarray]
    arrays: dict[str, dict[str, np.ndarray]]
    skipped: list[tuple[str, str]]

    def summary(self) -> str:
        """One sentence for a dataset description: what was left out and why."""
        if not self.skipped:
            return ""
        return f" Skipped {len(self.skipped)} unusable file(s): " + "; ".join(f"{p} ({r})" for p, r in self.skipped)


def open_entry(key: str) -> Entry | None:
    """The entry for ``key``, memory-mapped copy-on-write (writes stay private to the process), or None."""
    folder = datasets_root() / key
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        if manifest.get("format") != FORMAT:
            return None
        indices, arrays = {}, {}
        for split, spec in manifest["splits"].items():
            indices[split] = np.load(folder / spec["indices"])
            arrays[split] = {name: np.load(folder / file, mmap_mode="c") for name, file in spec["arrays"].items()}
    except (OSError, ValueError, KeyError):
        if folder.is_dir():  # complete when renamed into place, so damaged since (a file deleted): decode again
            shutil.rmtree(folder, ignore_errors=True)
        return None
    return Entry(key, indices, arrays, [tuple(s) for s in manifest["skipped"]])


@contextmanager
def staging(key: str) -> Iterator[Path]:
    """A private folder for a new entry; removed on any exit, after `publish` has renamed it into place or not."""
    root = datasets_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{key}-", dir=root))
    except OSError as e:
        raise DataError(f"dataset cache {root} is not writable ({e}); allowed: a writable folder in "
                        "MEDTRANSFER_CACHE") from None
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def publish(folder: Path, key: str, dataset: str, indices: dict[str, np.ndarray],
            arrays: dict[str, dict[str, str]], skipped: list[tuple[str, str]]) -> None:
    """Write the manifest last, then rename the staging folder to the key; if another process got there first,
    its (equivalent) entry stays and ours is discarded by `staging`."""
    splits = {}
    for split, kept in indices.items():
        np.save(folder / f"{split}.indices.npy", kept)
        splits[split] = {"indices": f"{split}.indices.npy", "arrays": arrays[split]}
    size = sum(f.stat().st_size for f in folder.iterdir())
    (folder / MANIFEST).write_text(json.dumps({
        "format": FORMAT, "key": key, "dataset": dataset, "created": time.time(), "bytes": size,
        "splits": splits, "skipped": skipped}, indent=1))
    try:
        os.rename(folder, datasets_root() / key)
    except OSError:
        if not (datasets_root() / key / MANIFEST).exists():
            raise


def list_entries() -> list[dict]:
    """Every complete entry as {key, dataset, bytes, created}, newest first."""
    root = datasets_root()
    rows = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if folder.name.startswith("."):
            continue
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
        except (OSError, ValueError):
            continue
        rows.append({"key": folder.name, "dataset": manifest.get("dataset", "?"), "bytes": manifest.get("bytes", 0),
                     "created": manifest.get("created", 0.0)})
    return sorted(rows, key=lambda r: -r["created"])


def clear_entries(keys: Sequence[str] = ()) -> list[str]:
    """Delete the entries named (all, and any leftover staging folders, when none are named); returns the names.
    Processes that have an entry memory-mapped keep reading it: the files vanish only when they unmap."""
    root = datasets_root()
    if not root.is_dir():
        return []
    folders = [root / k for k in keys] if keys else sorted(root.iterdir())
    removed = []
    for folder in folders:
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
    return removed
