"""Every init/strategy against a baseline, with the test that fits the design and Holm correction over the family.

The design is paired: in medtransfer a seed fixes the labelled subset (``label_fraction_indices``) and the head's
initialisation for every init and strategy, so runs with the same (dataset, label fraction, seed) differ only in
what is being compared. Runs are therefore matched by seed, and the per-seed differences are tested (paired
t-test, Wilcoxon signed-rank). Only when two cells share no seed are they compared unpaired (Welch, Mann-Whitney).

The baseline is either a cell, ``INIT/STRATEGY`` (default ``random/end_to_end``: every other init and strategy is
compared with it), or an init alone, ``INIT`` (every other init is compared with it under the same strategy, as
the transfer-learning benchmark compares inits with the ImageNet one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from medtransfer.errors import ConfigError, allowed
from medtransfer.evaluate import LOWER_IS_BETTER
from medtransfer.evaluate.statistics import holm, marker, paired_test, relative_improvement, unpaired_test
from medtransfer.report.coverage import finished_runs
from medtransfer.report.integrity import check_one_experiment, grid_axes, with_axes

DEFAULT_BASELINE = "random/end_to_end"
COLUMNS = ["dataset", "fraction", "init", "strategy", "baseline", "design", "n", "mean", "baseline_mean", "diff",
           "improvement_%", "test", "p", "p_holm", "marker", "rank_test", "p_rank", "p_rank_holm", "effect_name",
           "effect", "notes"]


@dataclass(frozen=True)
class Baseline:
    init: str
    strategy: str | None = None

    @classmethod
    def parse(cls, text: str) -> "Baseline":
        """``INIT/STRATEGY`` or ``INIT``; strategy labels may contain spaces ("random/range 0.25-0.5")."""
        init, _, strategy = text.partition("/")
        return cls(init.strip(), strategy.strip() or None)

    def __str__(self) -> str:
        return self.init if self.strategy is None else f"{self.init}/{self.strategy}"


def _check(rows: pd.DataFrame, baseline: Baseline) -> None:
    if baseline.init not in set(rows["init"]):
        raise ConfigError(f"baseline init {baseline.init!r} has no finished run; allowed: {allowed(set(rows['init']))}")
    strategies = set(rows.loc[rows["init"] == baseline.init, "strategy"])
    if baseline.strategy is not None and baseline.strategy not in strategies:
        raise ConfigError(f"baseline strategy {baseline.strategy!r} has no finished run with init {baseline.init!r}; "
                          f"allowed: {allowed(strategies)}")


def _pairs(candidate: pd.Series, base: pd.Series) -> tuple[str, np.ndarray, np.ndarray, list[str]]:
    """Values by seed -> (design, candidate values, baseline values, notes)."""
    common = candidate.index.intersection(base.index).sort_values()
    if len(common) == 0 and len(candidate) and len(base):
        return "unpaired", candidate.to_numpy(), base.to_numpy(), ["no seed in common: unpaired test"]
    notes = []
    unpaired = sorted(set(candidate.index).symmetric_difference(base.index))
    if unpaired:
        notes.append(f"seed(s) {', '.join(map(str, unpaired))} lack a partner and are left out of the test")
    return "paired", candidate[common].to_numpy(), base[common].to_numpy(), notes


def comparison_table(rows: pd.DataFrame, metric: str, baseline: str | Baseline = DEFAULT_BASELINE) -> pd.DataFrame:
    """One row per (dataset, fraction, init, strategy) compared with the baseline at the same dataset and fraction
    (and the same training policy, which then is a column).

    ``mean``/``baseline_mean`` are over the seeds entering the test; ``diff`` and ``effect`` are candidate minus
    baseline (d_z paired, Hedges' g unpaired); ``improvement_%`` is positive when the candidate is better.
    ``p_holm`` and ``p_rank_holm`` are Holm-adjusted over all rows of the table (one family per metric);
    ``marker`` (n.s., *, **, ***) is read from ``p_holm``. ``notes`` say why a test is missing or limited.
    """
    baseline = Baseline.parse(baseline) if isinstance(baseline, str) else baseline
    column = f"metric.{metric}"
    if column not in rows:
        raise ConfigError(f"metric {metric!r} is not in these results")
    check_one_experiment(rows)
    done = finished_runs(rows)
    done = done[done[column].notna()]
    _check(done, baseline)
    lower = metric in LOWER_IS_BETTER
    axes = grid_axes(done)  # e.g. the training policy: each policy's runs are compared with its own baseline
    records = []
    for (dataset, fraction, *levels), group in done.groupby(["dataset", "fraction", *axes], sort=True):
        values = {key: g.set_index("seed")[column] for key, g in group.groupby(["init", "strategy"], sort=True)}
        for (init, strategy), candidate in values.items():
            base_key = (baseline.init, baseline.strategy or strategy)
            if (init, strategy) == base_key or (baseline.strategy is None and init == baseline.init):
                continue
            base = values.get(base_key, pd.Series(dtype=float))
            if base.empty:
                continue  # no finished baseline here: the missing-runs table shows it
            records.append({"dataset": dataset, "fraction": fraction, "init": init, "strategy": strategy,
                            **dict(zip(axes, levels)), "baseline": f"{base_key[0]}/{base_key[1]}",
                            **compare(candidate, base, lower)})
    return with_holm(records, with_axes(COLUMNS, done))


def compare(candidate: pd.Series, base: pd.Series, lower: bool) -> dict:
    """Two cells' values by seed -> the test columns of one comparison row (paired by seed where they share seeds;
    ``lower``: the metric is better when lower)."""
    design, c, b, notes = _pairs(candidate, base)
    result = paired_test(c, b) if design == "paired" else unpaired_test(c, b)
    mean, base_mean = (float(np.mean(c)), float(np.mean(b))) if len(c) and len(b) else (math.nan, math.nan)
    return {"design": design, "n": result.n, "mean": mean, "baseline_mean": base_mean, "diff": result.diff,
            "improvement_%": relative_improvement(mean, base_mean, lower), "test": result.test, "p": result.p,
            "rank_test": result.rank_test, "p_rank": result.p_rank, "effect_name": result.effect_name,
            "effect": result.effect, "notes": "; ".join(notes + result.notes)}


def with_holm(records: list[dict], columns: list[str] = COLUMNS) -> pd.DataFrame:
    """Comparison rows as a table, p-values Holm-adjusted over all of them (one family) and marked."""
    table = pd.DataFrame(records, columns=[c for c in columns if c not in ("p_holm", "p_rank_holm", "marker")])
    table["p_holm"] = holm(table["p"].to_numpy(dtype=float))
    table["p_rank_holm"] = holm(table["p_rank"].to_numpy(dtype=float))
    table["marker"] = [marker(p) for p in table["p_holm"]]
    return table[columns]


def _p(value: float) -> str:
    return "" if math.isnan(value) else ("<0.0001" if value < 0.0001 else f"{value:.4f}")


def display_table(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """A ``comparison_table`` as text columns for reading (Markdown, LaTeX, HTML); numbers rounded, p < 0.0001
    shown as such, missing tests as empty cells."""
    def number(value: float, fmt: str) -> str:
        return "" if math.isnan(value) else format(value, fmt)

    return pd.DataFrame({
        "dataset": table["dataset"], "labels": table["fraction"].map(lambda f: f"{f * 100:g}%"),
        "init": table["init"], "strategy": table["strategy"],
        **{axis: table[axis] for axis in with_axes([], table)}, "baseline": table["baseline"],
        "n": table["n"].astype(str) + " " + table["design"],
        "mean": table["mean"].map(lambda v: number(v, f".{digits}f")),
        "baseline mean": table["baseline_mean"].map(lambda v: number(v, f".{digits}f")),
        "improvement": table["improvement_%"].map(lambda v: number(v, "+.2f") + ("%" if not math.isnan(v) else "")),
        "p (t)": table["p"].map(_p), "p Holm": table["p_holm"].map(_p), "sig.": table["marker"],
        "p rank Holm": table["p_rank_holm"].map(_p),
        "effect": [f"{name} {number(v, '+.2f')}" if not math.isnan(v) else ""
                   for name, v in zip(table["effect_name"], table["effect"])],
        "notes": table["notes"]})


def to_markdown(table: pd.DataFrame) -> str:
    return display_table(table).to_markdown(index=False, disable_numparse=True) + "\n"


def to_latex(table: pd.DataFrame) -> str:
    """LaTeX tabular of the comparisons (notes left out: they are for the reader of the HTML/Markdown)."""
    shown = display_table(table).drop(columns="notes")
    return shown.style.hide(axis="index").format(escape="latex").format_index(escape="latex", axis=1).to_latex(
        hrules=True)
