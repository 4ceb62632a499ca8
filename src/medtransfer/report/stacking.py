"""The stacking table: does an init's gain over the baseline init survive each training policy?

For every training policy, each init is compared with the baseline init under the same policy, strategy, dataset
and label fraction — paired by seed and Holm-corrected over the whole table, as ``comparisons`` does — and the gains
are laid side by side, one column per policy, so "SSL + mixup" against "random + mixup" reads at a glance next to
"SSL" against "random". The study this follows (Zhang et al.) found SSL's gain often shrinks or turns negative once
such policies are applied.
"""

from __future__ import annotations

import math

import pandas as pd

from medtransfer.report.comparisons import Baseline, comparison_table

ROW_KEYS = ["dataset", "fraction", "strategy", "init"]


def stacking_table(rows: pd.DataFrame, metric: str, baseline_init: str) -> pd.DataFrame:
    """``comparison_table`` against ``baseline_init`` alone: one row per (dataset, fraction, init, strategy,
    policy) with diff (init − baseline init, same policy), p, p_holm (over all rows) and marker."""
    table = comparison_table(rows, metric, Baseline(baseline_init))
    return table if "policy" in table else table.assign(policy="none")


def _cell(row, digits: int) -> str:
    if math.isnan(row.diff):
        return "no test" if math.isnan(row.mean) else f"{row.mean:.{digits}f} (no pair)"
    return f"{row.diff:+.{digits}f} {row.marker} ({row.mean:.{digits}f} vs {row.baseline_mean:.{digits}f}, n={row.n})"


def stacking_display(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """Wide text table: rows (dataset, label fraction, strategy, init), one column per policy ("none" first); each
    cell is "gain marker (init mean vs baseline-init mean, n paired seeds)", the marker read from the Holm-adjusted
    p."""
    shown = table.assign(text=[_cell(r, digits) for r in table.itertuples()])
    order = sorted(table["policy"].unique(), key=lambda p: (p != "none", p))
    wide = shown.pivot(index=ROW_KEYS, columns="policy", values="text").reindex(columns=order).fillna("-")
    wide = wide.rename_axis(columns=None).reset_index()
    return wide.assign(fraction=wide["fraction"].map(lambda f: f"{f * 100:g}%")).rename(columns={"fraction": "labels"})


def to_markdown(table: pd.DataFrame, metric: str, baseline_init: str) -> str:
    title = (f"{metric}: gain of each init over {baseline_init} under each training policy (paired by seed; "
             "marker from Holm-adjusted p over the whole table)")
    return f"{title}\n\n{stacking_display(table).to_markdown(index=False, disable_numparse=True)}\n"
