"""Who holds which runs: an owner id per grid process and a thread that keeps its claims' leases alive.

A claim is only as good as its lease: a process that dies stops renewing, its lease expires and another process
takes the run over. The lease is long compared with the renewal period, so a briefly stalled owner keeps its runs.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from filelock import FileLock

from medtransfer.bench.store import ResultStore

LEASE_S = 120.0  # a run whose owner stopped renewing this long ago is taken over

log = logging.getLogger(__name__)


@lru_cache(maxsize=None)
def _owner(pid: int) -> str:
    return f"{socket.gethostname()}:{pid}:{uuid.uuid4().hex[:8]}"


def process_owner() -> str:
    """host:pid:uuid of this grid process (the uuid tells apart processes that reuse a pid)."""
    return _owner(os.getpid())


def pass_started() -> str:
    """Now, as the store writes times: runs that ended after this were attempted in this pass."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class LeaseKeeper:
    """Renews the leases of the runs this process holds every ``lease_s / 4`` seconds in a daemon thread."""

    def __init__(self, store: ResultStore, owner: str, lease_s: float = LEASE_S):
        self.store, self.owner, self.lease_s = store, owner, lease_s
        self._held: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew_until_stopped, name="medtransfer-leases", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def hold(self, run_id: str) -> None:
        with self._lock:
            self._held.add(run_id)

    def release(self, run_id: str) -> None:
        with self._lock:
            self._held.discard(run_id)

    def _renew_until_stopped(self) -> None:
        while not self._stop.wait(self.lease_s / 4):
            with self._lock:
                held = sorted(self._held)
            if not held:
                continue
            try:
                self.store.renew(held, self.owner, self.lease_s)
            except Exception as err:  # noqa: BLE001 - a busy or briefly unreadable store must not kill the thread
                log.warning("could not renew run leases: %s", err)


@contextmanager
def pretraining_lock(output: Path) -> Iterator[None]:
    """Held while a pre-training runs in ``output``: a second process sharing the folder waits, then finds the
    finished checkpoint and reuses it, instead of training into the same folder at the same time."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(output.with_name(output.name + ".lock")):
        yield
