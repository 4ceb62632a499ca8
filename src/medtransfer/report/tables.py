"""Seed-aggregated result tables: the benchmark's answer to "which init and strategy win at which label budget".

A single seed of a few-label run is noise, so every number is shown with its spread over seeds
and the number of seeds behind it. ``summary_table``/``format_table`` are the terminal's compact view;
``summary_with_ci`` adds t-based confidence intervals and the expected seed count per cell (so a cell
with failed runs is flagged, not silently averaged), with Markdown, LaTeX and HTML writers for reports.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np
import pandas as pd

from medtransfer.errors import ConfigError, allowed
from medtransfer.evaluate import LOWER_IS_BETTER  # error metrics (mae, hd95): the best cell is the lowest
from medtransfer.evaluate.statistics import mean_ci
from medtransfer.report.coverage import expected_grid, finished_runs, metric_names
from medtransfer.report.integrity import check_one_experiment, config_table, legend, warned_runs, with_axes

BY = ("dataset", "init", "strategy", "fraction")
ROW_KEYS = ("dataset", "init", "strategy")


def summary_table(rows: pd.DataFrame, metric: str = "auc", by: Sequence[str] = BY) -> pd.DataFrame:
    """Mean, std (ddof=1; NaN for a single seed) and n of ``metric`` per group of ``by`` over the finished runs.

    ``rows`` is ``ResultStore.rows()`` (finished runs) or ``rows(status=None)``. ``n`` counts the runs with a
    defined value, so a NaN metric (e.g. AUC of a split with one class) lowers n instead of poisoning the mean.
    Runs of different experiments in one store are never averaged together: groups are split by ``config_key`` (a
    short key) with ``config_differs`` saying how (see ``integrity.config_table``). Rows that carry the runs'
    ``extra`` add ``warned``: the finished runs of the group that stored a warning (``finetune.diagnostics``).
    """
    present = metric_names(rows)
    if metric not in present:
        raise ConfigError(f"metric {metric!r} is not in these results; present: {allowed(present) or 'none'}")
    missing = [c for c in by if c not in rows.columns]
    if missing:
        raise ConfigError(f"cannot group by {', '.join(missing)}; columns: {allowed(rows.columns)}")
    by = with_axes(by, rows)  # a policy is part of every cell: never pooled
    configs = config_table(rows)
    if configs is not None:
        rows, by = rows.join(configs), [*by, *configs.columns]
    done = finished_runs(rows)
    done = done.assign(warned=warned_runs(done)) if "extra" in done else done
    aggregates = {"mean": (f"metric.{metric}", "mean"), "std": (f"metric.{metric}", "std"),
                  "n": (f"metric.{metric}", "count"), **({"warned": ("warned", "sum")} if "warned" in done else {})}
    return done.groupby(list(by), sort=True).agg(**aggregates).reset_index()


def _fraction_label(fraction: float) -> str:
    return f"{fraction * 100:g}%"


def _cell(mean: float, std: float, n: int, digits: int, warned: int = 0) -> str:
    spread = "" if pd.isna(std) else f" ± {std:.{digits}f}"
    return f"{mean:.{digits}f}{spread} (n={n}{f', {warned} warned' if warned else ''})"


def format_table(summary: pd.DataFrame, metric: str, digits: int = 3) -> str:
    """Plain-text table of a ``summary_table``: rows (dataset, init, strategy[, config]), columns label fractions.

    The best mean of each (dataset, fraction) column is marked "*" (lowest for error metrics such
    as mae; exact ties all get a star). A combination without runs at a fraction shows "-". "k warned" counts
    the runs of a cell that finished with a warning; a store of several experiments ends with the config legend.
    """
    needed = [*BY, "mean", "std", "n"]
    missing = [c for c in needed if c not in summary.columns]
    if missing:
        raise ValueError(f"summary lacks columns {', '.join(missing)}; build it with summary_table(by={BY})")
    shown = with_axes(ROW_KEYS, summary)
    row_keys = [*shown, *(["config_key"] if "config_key" in summary else [])]
    best = summary.groupby(["dataset", "fraction"])["mean"].transform("min" if metric in LOWER_IS_BETTER else "max")
    warned = summary["warned"] if "warned" in summary else pd.Series(0, index=summary.index)
    cells: dict[tuple, dict[float, str]] = defaultdict(dict)
    for row, is_best, n_warned in zip(summary.itertuples(index=False), summary["mean"] == best, warned):
        key = tuple(getattr(row, k) for k in row_keys)
        cells[key][row.fraction] = _cell(row.mean, row.std, row.n, digits, int(n_warned)) + ("*" if is_best else "")
    fractions = sorted(summary["fraction"].unique())
    table = [[*shown, *(["config"] if "config_key" in summary else []), *map(_fraction_label, fractions)]]
    table += [[*map(str, key), *(cells[key].get(f, "-") for f in fractions)] for key in sorted(cells)]
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table]
    title = f"{metric}: mean ± std over seeds (n seeds); * best per dataset and label fraction"
    configs = [legend(summary[["config_key", "config_differs"]])] if "config_key" in summary else []
    return "\n".join([title, *lines, *configs])


def summary_with_ci(rows: pd.DataFrame, metrics: Sequence[str] | None = None,
                    confidence: float = 0.95) -> pd.DataFrame:
    """Long table, one row per (dataset, init, strategy, fraction, metric) of the expected grid.

    Columns: mean, std, ci_low, ci_high (t-based, ``confidence``), n (finished runs with a defined value),
    n_expected (seeds in the grid), ``warned`` (finished runs that stored a warning), ``short`` (n < n_expected: a
    mean over fewer seeds than the others) and ``best`` (highest mean per dataset, fraction and metric; lowest for
    error metrics). A cell without any finished run stays in the table with n = 0 and NaN statistics instead of
    disappearing.
    """
    metrics = list(metrics) if metrics is not None else metric_names(rows)
    unknown = sorted(set(metrics) - set(metric_names(rows)))
    if unknown:
        raise ConfigError(f"metric(s) {', '.join(map(repr, unknown))} not in these results; present: "
                          f"{allowed(metric_names(rows)) or 'none'}")
    check_one_experiment(rows)
    by = with_axes(BY, rows)
    expected = expected_grid(rows).groupby(by).size()
    done = finished_runs(rows)
    warned = warned_runs(done).groupby([done[c] for c in by]).sum()
    records = []
    for metric in metrics:
        values = {key: group.dropna().to_numpy() for key, group in done.groupby(by)[f"metric.{metric}"]}
        for key, n_expected in expected.items():
            mean, std, low, high, n = mean_ci(values.get(key, np.empty(0)), confidence)
            records.append({**dict(zip(by, key)), "metric": metric, "mean": mean, "std": std, "ci_low": low,
                            "ci_high": high, "n": n, "n_expected": int(n_expected),
                            "warned": int(warned.get(key, 0))})
    summary = pd.DataFrame(records, columns=[*by, "metric", "mean", "std", "ci_low", "ci_high", "n", "n_expected",
                                             "warned"])
    summary["short"] = summary["n"] < summary["n_expected"]
    lower = summary["metric"].isin(LOWER_IS_BETTER)
    signed = summary["mean"].where(~lower, -summary["mean"])
    summary["best"] = signed == signed.groupby([summary[c] for c in ("dataset", "fraction", "metric")]).transform("max")
    return summary


def _ci_cell(row, digits: int, pm: str) -> str:
    count = f"n={row.n}" if not row.short else f"n={row.n} of {row.n_expected}"
    count += f", {row.warned} warned" if row.warned else ""
    if row.n == 0:
        return f"missing ({count})"
    if row.n == 1:
        return f"{row.mean:.{digits}f} ({count})"
    interval = f"[{row.ci_low:.{digits}f}, {row.ci_high:.{digits}f}]"
    return f"{row.mean:.{digits}f} {pm} {row.std:.{digits}f} {interval} ({count})"


def wide_table(summary: pd.DataFrame, metric: str, digits: int = 3, pm: str = "±"
               ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(texts, best, short) for one metric: rows (dataset, init, strategy), columns label fractions.

    Each text is "mean ± std [95 % CI] (n=…)"; "n=2 of 3" flags a cell with fewer seeds than the grid has.
    """
    part = summary[summary["metric"] == metric]
    if part.empty:
        raise ConfigError(f"metric {metric!r} is not in this summary; present: {allowed(summary['metric'].unique())}")
    part = part.assign(text=[_ci_cell(r, digits, pm) for r in part.itertuples()],
                       column=part["fraction"].map(_fraction_label))
    columns = [_fraction_label(f) for f in sorted(part["fraction"].unique())]

    def pivot(values: str, fill):
        table = part.pivot(index=with_axes(ROW_KEYS, part), columns="column", values=values).reindex(columns=columns)
        return table.rename_axis(columns=None).fillna(fill)

    return pivot("text", "-"), pivot("best", False).astype(bool), pivot("short", False).astype(bool)


def table_title(metric: str, confidence: float = 0.95) -> str:
    direction = "lowest" if metric in LOWER_IS_BETTER else "highest"
    return (f"{metric}: mean ± std [{confidence:.0%} CI] over seeds (n seeds); bold = best ({direction}) per "
            f"dataset and label fraction; 'n=k of m' = only k of the grid's m seeds finished; 'j warned' = j runs "
            "stored a warning (see Warnings)")


def to_markdown(summary: pd.DataFrame, metric: str, digits: int = 3) -> str:
    """Markdown table (GitHub style) with the best cell of each column in bold."""
    texts, best, _ = wide_table(summary, metric, digits)
    marked = texts.where(~best, "**" + texts + "**")
    return f"{table_title(metric)}\n\n{marked.reset_index().to_markdown(index=False, disable_numparse=True)}\n"


def to_latex(summary: pd.DataFrame, metric: str, digits: int = 3) -> str:
    """LaTeX tabular (booktabs rules) with the best cell of each column in bold; names are LaTeX-escaped."""
    texts, best, _ = wide_table(summary, metric, digits, pm="$\\pm$")
    styler = texts.style.apply(lambda _: np.where(best, "font-weight: bold", ""), axis=None)
    styler = styler.format_index(escape="latex", axis=0).format_index(escape="latex", axis=1)
    return styler.to_latex(hrules=True, convert_css=True)


def to_html(summary: pd.DataFrame, metric: str, digits: int = 3) -> str:
    """HTML table: best cell of each column bold, cells with fewer seeds than the grid shaded."""
    texts, best, short = wide_table(summary, metric, digits)
    styles = np.where(best, "font-weight: bold;", "") + np.where(short, "background: #fde8c8;", "")
    styler = texts.style.apply(lambda _: styles, axis=None).set_table_attributes(
        f'class="summary" data-metric="{metric}"')
    return styler.to_html()
