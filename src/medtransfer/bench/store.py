"""Results store: one SQLite row per benchmark run, keyed by the hash of its resolved config.

A benchmark is hundreds of runs over days, often from several processes sharing one folder,
and may be killed at any moment. SQLite gives that for free: every change below is a single
transaction (a killed process leaves the previous state, never half a row), WAL journaling lets
readers work while a writer commits, and the lock ``timeout`` makes concurrent writers wait
instead of failing. A killed run simply stays "running"; starting it again restarts it.

Several processes share one grid by *claiming* runs: a claim records an owner and a lease that its owner renews
while the run trains, so a run claimed by a live process is skipped by the others and a killed owner's run (its
lease expired) is taken over. Schema version 2 added the owner and lease columns; version 1 stores are migrated
in place when opened (their rows kept, their running rows unowned and so free to claim). Version 3 added the
training-policy column, "none" for every older run.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import sqlite3
import subprocess
import tempfile
import time
from contextlib import closing, contextmanager
from datetime import datetime, timezone
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from medtransfer.bench.store_faults import read_only_uri, store_errors
from medtransfer.errors import MedtransferError, StoreError, allowed

SCHEMA_VERSION = 3
STATUSES = ("running", "done", "failed", "interrupted")
LABELS = ("dataset", "init", "strategy", "fraction", "seed")
AXIS_LABELS = {"policy": "none"}  # grid axes added later: optional in labels; older rows hold this default
JSON_COLUMNS = ("config", "metrics", "per_class", "val_metrics", "timings", "extra", "versions")
_RESULT_COLUMNS = ("finished_at", "metrics", "per_class", "val_metrics", "timings", "extra", "error")
PACKAGES = ("numpy", "torch", "timm", "monai", "lightning", "lightly", "medtransfer")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id      TEXT PRIMARY KEY,
    status      TEXT NOT NULL,
    dataset     TEXT NOT NULL,
    init        TEXT NOT NULL,
    strategy    TEXT NOT NULL,
    fraction    REAL NOT NULL,
    seed        INTEGER NOT NULL,
    attempts    INTEGER NOT NULL,
    started_at  TEXT NOT NULL,
    finished_at TEXT,
    config      TEXT NOT NULL,
    metrics     TEXT,
    per_class   TEXT,
    val_metrics TEXT,
    timings     TEXT,
    extra       TEXT,
    error       TEXT,
    versions    TEXT NOT NULL,
    git_commit  TEXT,
    hostname    TEXT NOT NULL,
    owner       TEXT,
    lease_until REAL,
    policy      TEXT NOT NULL DEFAULT 'none'
)
"""
# each entry upgrades a store from the version of its index + 1 to the next one
_MIGRATIONS = (
    ("ALTER TABLE runs ADD COLUMN owner TEXT", "ALTER TABLE runs ADD COLUMN lease_until REAL"),
    ("ALTER TABLE runs ADD COLUMN policy TEXT NOT NULL DEFAULT 'none'",),
)
CLAIM_OUTCOMES = ("claimed", "done", "held", "ended")


def _json_default(obj: Any) -> Any:
    """Encode the non-JSON types a resolved config or metric dict commonly holds."""
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic | np.ndarray):
        return obj.tolist()
    raise TypeError(f"cannot encode {type(obj).__name__} as JSON: {obj!r}")


def _dumps(obj: Any) -> str:
    # sorted keys and no whitespace make the text canonical; json writes floats with repr
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)


def config_hash(config: dict) -> str:
    """sha256 hex of the canonical JSON of ``config``: equal configs give equal ids in any key order."""
    return hashlib.sha256(_dumps(config).encode()).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@lru_cache(maxsize=1)
def _environment() -> tuple[str, str | None, str]:
    """(versions JSON, git commit, hostname), recorded so a surprising number can be traced later."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return _dumps(versions), _git_commit(), socket.gethostname()


def _git(*args: str) -> str | None:
    """stdout of a git command run in the package folder, or None on any failure (no git, no repo)."""
    try:
        out = subprocess.run(
            ["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def _git_commit() -> str | None:
    """HEAD of the medtransfer source checkout; None for an install that git does not track
    (e.g. a wheel in a virtual environment that happens to sit inside some other repository)."""
    if _git("ls-files", "--error-unmatch", Path(__file__).name) is None:
        return None
    return _git("rev-parse", "--verify", "HEAD")


def write_predictions(run_dir: Path, **arrays: np.ndarray) -> Path:
    """Write run_dir/test_predictions.npz via a temp file and os.replace, so readers never see half a file.
    A function of the folder alone, so a grid worker on another process or node writes it without the database."""
    target = Path(run_dir) / "test_predictions.npz"
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".test_predictions.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def owner_alive(owner: str | None) -> bool:
    """False for a claim owner (host:pid:uuid) known to be dead: a process of this host that no longer exists, so
    its runs are taken over at once instead of when its lease expires. Owners on other hosts count as alive."""
    host, _, rest = (owner or "").partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return owner is not None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


class ClaimLost(MedtransferError):
    """A run's lease expired and another process took it over; this process's result for it is discarded."""


class ResultStore:
    """The runs of one experiment folder, shared safely between processes."""

    def __init__(self, folder: str | Path, timeout: float = 60.0, read_only: bool = False):
        """``read_only`` opens an existing store without ever writing it (``results``, ``report``), also where the
        file or folder is read-only; otherwise the folder and store are created when missing."""
        self.folder = Path(folder)
        self.path = self.folder / "results.sqlite"
        self.timeout = timeout
        self._uri = None
        if read_only:
            if not self.path.is_file():
                raise StoreError(f"{self.folder}: no results.sqlite here; pass the experiment folder printed by 'run'")
            self._uri = read_only_uri(self.path)
            with store_errors(self.path, "read the results store"), closing(self._connect()) as con:
                # an older schema reads as it is: migrating would write
                self._check_version(con.execute("PRAGMA user_version").fetchone()[0],
                                    tuple(range(1, SCHEMA_VERSION + 1)))
            return
        with store_errors(self.folder, "create the experiment folder"):
            self.folder.mkdir(parents=True, exist_ok=True)
        with store_errors(self.path, "write the results store"):
            with closing(self._connect()) as con:
                con.execute("PRAGMA journal_mode=WAL")  # persistent; must run outside a transaction
            with self._transaction() as con:
                version = con.execute("PRAGMA user_version").fetchone()[0]
                self._check_version(version, tuple(range(SCHEMA_VERSION + 1)))
                if version == 0:
                    con.execute(_SCHEMA)
                else:
                    for statements in _MIGRATIONS[version - 1:]:
                        for statement in statements:
                            con.execute(statement)
                con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _check_version(self, version: int, accepted: tuple[int, ...]) -> None:
        if version == 0 and 0 not in accepted:
            raise StoreError(f"{self.path} holds no results yet; pass the experiment folder printed by 'run'")
        if version not in accepted:
            raise StoreError(f"{self.path} has schema version {version}; this medtransfer reads versions 1 to "
                             f"{SCHEMA_VERSION}")

    def _connect(self) -> sqlite3.Connection:
        # autocommit mode: transactions are opened explicitly in _transaction
        con = sqlite3.connect(self._uri or self.path, uri=self._uri is not None, timeout=self.timeout,
                              isolation_level=None)
        con.row_factory = sqlite3.Row
        return con

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; IMMEDIATE takes the write lock up front so read-check-write is atomic."""
        with store_errors(self.path, "write the results store"), closing(self._connect()) as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                if con.in_transaction:  # SQLite may have rolled back already (e.g. disk full)
                    con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def _status(self, con: sqlite3.Connection, run_id: str) -> str | None:
        row = con.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return None if row is None else row["status"]

    def run_dir(self, run_id: str) -> Path:
        """Folder for a run's files; 16 hex digits keep paths short and are unique in practice."""
        path = self.folder / "runs" / run_id[:16]
        with store_errors(path, "create the run folder"):
            path.mkdir(parents=True, exist_ok=True)
        return path

    def missing_run_folders(self, rows: pd.DataFrame) -> list[str]:
        """Run ids of finished runs in ``rows`` whose folder was deleted by hand. Their stored metrics stay valid
        and are kept (a finished run is never redone), but their training log and test predictions are gone."""
        done = rows.loc[rows["status"] == "done", "run_id"] if len(rows) else []
        return [run_id for run_id in done if not (self.folder / "runs" / run_id[:16]).is_dir()]

    def status(self, run_id: str) -> str | None:
        """None if the run was never started, else one of STATUSES."""
        with store_errors(self.path, "read the results store"), closing(self._connect()) as con:
            return self._status(con, run_id)

    def start(self, run_id: str, config: dict, labels: dict) -> None:
        """Record a run as running, unowned; a running, failed or interrupted run is restarted (attempts + 1).

        Starting a "done" run raises ValueError: a finished result is never overwritten.
        """
        values = self._start_values(run_id, config, labels, owner=None, lease_until=None)
        with self._transaction() as con:
            if self._status(con, run_id) == "done":
                raise ValueError(f"run {run_id} is already done; refusing to overwrite a finished result")
            self._write_start(con, values)

    def claim(self, run_id: str, config: dict, labels: dict, owner: str, lease_s: float,
              since: str | None = None) -> str:
        """Atomically start a run for ``owner`` unless another process has it; returns one of CLAIM_OUTCOMES.

        "done": finished (by anyone). "held": running under another owner whose lease has not expired.
        "ended": failed or interrupted by another owner at or after ``since`` (an ISO time, e.g. when this grid
        pass began), so an attempt in this pass already happened elsewhere; the next pass retries it.
        "claimed": now running for ``owner`` with a lease of ``lease_s`` seconds: newly, restarted (attempts + 1),
        taken over from an owner whose lease expired or who died, or already ours (its lease renewed).
        """
        values = self._start_values(run_id, config, labels, owner, time.time() + lease_s)
        with self._transaction() as con:
            row = con.execute("SELECT status, owner, lease_until, finished_at FROM runs WHERE run_id = ?",
                              (run_id,)).fetchone()
            if row is not None and row["status"] == "done":
                return "done"
            if row is not None and row["status"] == "running" and row["owner"] == owner:
                con.execute("UPDATE runs SET lease_until = ? WHERE run_id = ?", (values["lease_until"], run_id))
                return "claimed"
            if (row is not None and row["status"] == "running" and (row["lease_until"] or 0) > time.time()
                    and owner_alive(row["owner"])):
                return "held"
            if (row is not None and row["status"] != "running" and row["owner"] != owner and since is not None
                    and row["finished_at"] >= since):
                return "ended"
            self._write_start(con, values)
            return "claimed"

    def renew(self, run_ids: list[str], owner: str, lease_s: float) -> None:
        """Extend ``owner``'s leases on those of ``run_ids`` still running under ``owner``."""
        until = time.time() + lease_s
        with self._transaction() as con:
            con.executemany("UPDATE runs SET lease_until = ? WHERE run_id = ? AND owner = ? AND status = 'running'",
                            [(until, run_id, owner) for run_id in run_ids])

    def _start_values(self, run_id: str, config: dict, labels: dict, owner: str | None,
                      lease_until: float | None) -> dict:
        if set(labels) - set(AXIS_LABELS) != set(LABELS):
            raise ValueError(f"labels must have exactly the keys {allowed(LABELS)} (optionally "
                             f"{allowed(AXIS_LABELS)}), got {allowed(labels)}")
        versions, commit, host = _environment()
        return {
            "run_id": run_id,
            "status": "running",
            "started_at": _now(),
            "config": _dumps(config),
            "versions": versions,
            "git_commit": commit,
            "hostname": host,
            "owner": owner,
            "lease_until": lease_until,
            **{key: str(labels[key]) for key in ("dataset", "init", "strategy")},
            "fraction": float(labels["fraction"]),
            "seed": int(labels["seed"]),
            **{key: str(labels.get(key, default)) for key, default in AXIS_LABELS.items()},
        }

    def _write_start(self, con: sqlite3.Connection, values: dict) -> None:
        """Insert a new running row, or restart an existing one with its results cleared and attempts + 1."""
        if self._status(con, values["run_id"]) is None:
            columns = ", ".join(values)
            con.execute(
                f"INSERT INTO runs ({columns}, attempts) VALUES ({', '.join(':' + c for c in values)}, 1)",
                values,
            )
        else:
            assignments = ", ".join(f"{c} = :{c}" for c in values if c != "run_id")
            cleared = ", ".join(f"{c} = NULL" for c in _RESULT_COLUMNS)
            con.execute(
                f"UPDATE runs SET {assignments}, {cleared}, attempts = attempts + 1 WHERE run_id = :run_id",
                values,
            )

    def _end(self, run_id: str, allowed_from: tuple[str, ...], owner: str | None, **values: Any) -> None:
        """Move a run to a final state, refusing transitions that would overwrite a result or another's claim."""
        with self._transaction() as con:
            row = con.execute("SELECT status, owner FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            current = None if row is None else row["status"]
            if current not in allowed_from:
                raise ValueError(f"run {run_id} is {current or 'not started'}; expected {' or '.join(allowed_from)}")
            if owner is not None and row["owner"] != owner:
                raise ClaimLost(f"run {run_id} was taken over by {row['owner']} after {owner}'s lease expired")
            assignments = ", ".join(f"{c} = :{c}" for c in values)
            con.execute(
                f"UPDATE runs SET {assignments}, finished_at = :now, lease_until = NULL WHERE run_id = :run_id",
                {**values, "now": _now(), "run_id": run_id},
            )

    def finish(
        self,
        run_id: str,
        metrics: dict[str, float],
        per_class: dict[str, list[float]],
        val_metrics: dict[str, float],
        timings: dict[str, float],
        extra: dict | None = None,
        owner: str | None = None,
    ) -> None:
        """Store a running run's results and mark it done, all in one transaction; with ``owner``, only if the
        run is still that owner's (else ClaimLost: another process took it over and will store its own result)."""
        self._end(
            run_id,
            ("running",),
            owner,
            status="done",
            metrics=_dumps(metrics),
            per_class=_dumps(per_class),
            val_metrics=_dumps(val_metrics),
            timings=_dumps(timings),
            extra=_dumps(extra or {}),
        )

    def fail(self, run_id: str, error: str, status: str = "failed", owner: str | None = None) -> None:
        """Mark a run failed or interrupted with its error text; a done run is never touched, nor (with
        ``owner``) a run another process has taken over."""
        if status not in ("failed", "interrupted"):
            raise ValueError(f"status must be 'failed' or 'interrupted', got {status!r}")
        self._end(run_id, ("running", "failed", "interrupted"), owner, status=status, error=str(error))

    def save_predictions(self, run_id: str, **arrays: np.ndarray) -> Path:
        target = self.run_dir(run_id) / "test_predictions.npz"
        with store_errors(target, "write the test predictions"):
            return write_predictions(target.parent, **arrays)

    def rows(self, status: str | None = "done") -> pd.DataFrame:
        """One row per run (all runs if ``status`` is None), JSON decoded, metrics also as "metric.<name>"."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"unknown status {status!r}; allowed: {allowed(STATUSES)}")
        query = "SELECT * FROM runs" + ("" if status is None else " WHERE status = ?") + " ORDER BY rowid"
        with store_errors(self.path, "read the results store"), closing(self._connect()) as con:
            cursor = con.execute(query, () if status is None else (status,))
            columns = [d[0] for d in cursor.description]
            records = [dict(zip(columns, row)) for row in cursor.fetchall()]
        for record in records:
            for column in JSON_COLUMNS:
                record[column] = None if record[column] is None else json.loads(record[column])
            for name, value in (record["metrics"] or {}).items():
                record[f"metric.{name}"] = value
        return pd.DataFrame(records, columns=columns + sorted({c for r in records for c in r} - set(columns)))
