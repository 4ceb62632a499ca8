"""Seed-aggregated result tables: the benchmark's answer to "which init and strategy win at which label budget".

A single seed of a few-label run is noise, so every number is shown with its spread over seeds
and the number of seeds behind it.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import pandas as pd

from medtransfer.errors import ConfigError, allowed

BY = ("dataset", "init", "strategy", "fraction")
ROW_KEYS = ("dataset", "init", "strategy")
LOWER_IS_BETTER = frozenset({"mae"})


def summary_table(rows: pd.DataFrame, metric: str = "auc", by: Sequence[str] = BY) -> pd.DataFrame:
    """Mean, std (ddof=1; NaN for a single seed) and n of ``metric`` per group of ``by``.

    ``rows`` is ``ResultStore.rows()``. ``n`` counts the runs with a defined value, so a
    NaN metric (e.g. AUC of a split with one class) lowers n instead of poisoning the mean.
    """
    present = sorted(c.removeprefix("metric.") for c in rows.columns if c.startswith("metric."))
    if metric not in present:
        raise ConfigError(f"metric {metric!r} is not in these results; present: {allowed(present) or 'none'}")
    missing = [c for c in by if c not in rows.columns]
    if missing:
        raise ConfigError(f"cannot group by {', '.join(missing)}; columns: {allowed(rows.columns)}")
    grouped = rows.groupby(list(by), sort=True)[f"metric.{metric}"]
    return grouped.agg(mean="mean", std="std", n="count").reset_index()


def _fraction_label(fraction: float) -> str:
    return f"{fraction * 100:g}%"


def _cell(mean: float, std: float, n: int, digits: int) -> str:
    spread = "" if pd.isna(std) else f" ± {std:.{digits}f}"
    return f"{mean:.{digits}f}{spread} (n={n})"


def format_table(summary: pd.DataFrame, metric: str, digits: int = 3) -> str:
    """Plain-text table of a ``summary_table``: rows (dataset, init, strategy), columns label fractions.

    The best mean of each (dataset, fraction) column is marked "*" (lowest for error metrics such
    as mae; exact ties all get a star). A combination without runs at a fraction shows "-".
    """
    needed = [*BY, "mean", "std", "n"]
    missing = [c for c in needed if c not in summary.columns]
    if missing:
        raise ValueError(f"summary lacks columns {', '.join(missing)}; build it with summary_table(by={BY})")
    best = summary.groupby(["dataset", "fraction"])["mean"].transform("min" if metric in LOWER_IS_BETTER else "max")
    cells: dict[tuple, dict[float, str]] = defaultdict(dict)
    for row, is_best in zip(summary.itertuples(index=False), summary["mean"] == best):
        key = tuple(getattr(row, k) for k in ROW_KEYS)
        cells[key][row.fraction] = _cell(row.mean, row.std, row.n, digits) + ("*" if is_best else "")
    fractions = sorted(summary["fraction"].unique())
    table = [[*ROW_KEYS, *map(_fraction_label, fractions)]]
    table += [[*map(str, key), *(cells[key].get(f, "-") for f in fractions)] for key in sorted(cells)]
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table]
    title = f"{metric}: mean ± std over seeds (n seeds); * best per dataset and label fraction"
    return "\n".join([title, *lines])
