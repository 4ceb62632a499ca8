"""Which runs a report should have and which it lacks, so a mean over fewer seeds is never taken silently.

The expected grid is the product of every dataset, init, strategy, label fraction and seed that appears in the
store with any status — exactly what ``bench.grid.expand`` runs for one experiment, where a fusion whose members all
name their own strategy runs under that one strategy (``MembersStrategy``) alone, and no other init does. A run is *missing* when it
never finished (failed, interrupted, still running, never started) or when it finished with the metric undefined
(e.g. AUC on a test split holding one class).
"""

from __future__ import annotations

import itertools

import pandas as pd

from medtransfer.report.integrity import RUN_KEYS, with_axes


def metric_names(rows: pd.DataFrame) -> list[str]:
    """The metrics stored for these runs (``metric.<name>`` columns), in a stable order."""
    return sorted(c.removeprefix("metric.") for c in rows.columns if c.startswith("metric."))


def finished_runs(rows: pd.DataFrame) -> pd.DataFrame:
    """The runs with status "done" (a frame without a status column is taken as finished runs only)."""
    return rows[rows["status"] == "done"] if "status" in rows else rows


MEMBERS = "members"  # the name of ``finetune.fusion.MembersStrategy`` (not imported: reports load without torch)


def members_cells(rows: pd.DataFrame) -> set[tuple[str, str]]:
    """The (init, strategy) pairs of fusions run under their members' own strategies (``MembersStrategy``)."""
    configs = rows["config"] if "config" in rows else [None] * len(rows)
    return {(init, strategy) for init, strategy, config in zip(rows["init"], rows["strategy"], configs)
            if ((config or {}).get("strategy") or {}).get("name") == MEMBERS}


def expected_grid(rows: pd.DataFrame) -> pd.DataFrame:
    """Every (dataset, init, strategy[, policy], fraction, seed) of the product of the levels present in ``rows``,
    less the pairs ``expand`` never runs: a ``members_cells`` strategy with any other init, or its init with any
    other strategy (unless such a run is in ``rows``)."""
    keys = with_axes(RUN_KEYS, rows)
    levels = [sorted(rows[key].unique()) for key in keys]
    grid = pd.DataFrame(list(itertools.product(*levels)), columns=keys)
    own = members_cells(rows)
    if not own:
        return grid
    inits, strategies = {init for init, _ in own}, {strategy for _, strategy in own}
    pairs = list(zip(grid["init"], grid["strategy"]))
    present = set(zip(rows["init"], rows["strategy"]))
    keep = [pair in own or pair in present or (pair[0] not in inits and pair[1] not in strategies) for pair in pairs]
    return grid[keep].reset_index(drop=True)


def _first_line(text) -> str:
    return text.strip().splitlines()[0] if isinstance(text, str) and text.strip() else ""


def missing_runs(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per expected run without a defined ``metric``: its keys, ``status`` and the error's first line.

    ``status`` is the store's (failed, interrupted, running), "not started" for a run absent from the store, or
    "metric undefined" for a finished run whose value is NaN.
    """
    grid, keys = expected_grid(rows), with_axes(RUN_KEYS, rows)
    if "status" not in rows:  # a hand-made frame of finished runs
        rows = rows.assign(status="done")
    present = rows.reindex(columns=[*keys, "status", "error", f"metric.{metric}"])
    merged = grid.merge(present, on=keys, how="left")
    value = merged[f"metric.{metric}"]
    lacking = merged[(merged["status"] != "done") | value.isna()].copy()
    lacking["status"] = lacking["status"].fillna("not started")
    lacking.loc[lacking["status"] == "done", "status"] = "metric undefined"
    lacking["error"] = lacking["error"].map(_first_line)
    return lacking[[*keys, "status", "error"]].reset_index(drop=True)
