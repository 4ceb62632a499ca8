"""Where and with what the results were made: package versions, machines, commits and compute time per run,
so a surprising number in a report can be traced to the environment that produced it."""

from __future__ import annotations

import json

import pandas as pd

from medtransfer.report.coverage import finished_runs


def versions_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per distinct set of package versions, with how many runs used it (more than one row = mixed)."""
    texts = rows["versions"].map(lambda v: json.dumps(v or {}, sort_keys=True))
    records = [{**json.loads(text), "runs": count} for text, count in texts.value_counts(sort=True).items()]
    return pd.DataFrame(records)


def machines_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Runs per (hostname, git commit of the medtransfer checkout)."""
    keys = rows.reindex(columns=["hostname", "git_commit"]).fillna("unknown")
    return keys.value_counts().rename("runs").reset_index()


def compute_time(rows: pd.DataFrame) -> dict[str, float]:
    """Seconds of fine-tuning: ``fit`` + ``test`` as timed inside the finished runs, and ``wall`` from each run's
    start to its end over all runs that ended (failed ones included: they cost time too). Pre-training is not in
    the store and is not counted."""
    done = finished_runs(rows)
    timed = pd.DataFrame([t or {} for t in done.get("timings", [])])
    wall = pd.Series(dtype=float)
    if {"started_at", "finished_at"} <= set(rows):
        ended = rows.dropna(subset=["finished_at"])
        wall = (pd.to_datetime(ended["finished_at"]) - pd.to_datetime(ended["started_at"])).dt.total_seconds()
    return {"fit_s": float(timed.get("fit_s", pd.Series(dtype=float)).sum()),
            "test_s": float(timed.get("test_s", pd.Series(dtype=float)).sum()),
            "wall_s": float(wall.sum()), "runs_timed": int(len(done))}


def duration(seconds: float) -> str:
    """``3 h 02 min``, ``4 min 05 s`` or ``12.3 s``."""
    if seconds >= 3600:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"
    if seconds >= 60:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{seconds:.1f} s"
