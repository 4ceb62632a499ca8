"""Summary with confidence intervals, its Markdown/LaTeX/HTML writers, and missing runs shown, not dropped."""

import math

import numpy as np
import pandas as pd
import pytest
from toy_experiment import FAILED, SEEDS, auc_value
from scipy import stats

from medtransfer.errors import ConfigError
from medtransfer.report.coverage import MEMBERS, missing_runs
from medtransfer.report.integrity import check_one_experiment
from medtransfer.report.tables import summary_with_ci, to_html, to_latex, to_markdown, wide_table


def _cell(summary, init, strategy, fraction, metric="auc"):
    match = summary[(summary["init"] == init) & (summary["strategy"] == strategy) &
                    (summary["fraction"] == fraction) & (summary["metric"] == metric)]
    assert len(match) == 1
    return match.iloc[0]


def test_summary_has_t_intervals_and_flags_short_cells(experiment):
    _, rows = experiment
    summary = summary_with_ci(rows)
    assert set(summary["metric"]) == {"auc", "acc"} and len(summary) == 2 * 2 * 4 * 2
    values = np.array([auc_value("random", "linear", 0.1, s) for s in SEEDS])
    cell = _cell(summary, "random", "linear", 0.1)
    low, high = stats.t.interval(0.95, df=2, loc=values.mean(), scale=stats.sem(values))
    assert (cell["mean"], cell["ci_low"], cell["ci_high"]) == (
        pytest.approx(values.mean()), pytest.approx(low), pytest.approx(high))
    assert (cell["n"], cell["n_expected"], cell["short"]) == (3, 3, False)
    failed = _cell(summary, *FAILED[:3])  # one seed failed: the mean is over 2 and says so
    assert (failed["n"], failed["n_expected"], failed["short"]) == (2, 3, True)
    assert failed["mean"] == pytest.approx(np.mean([auc_value(*FAILED[:3], s) for s in (0, 1)]))


def test_best_cell_per_column(experiment):
    _, rows = experiment
    summary = summary_with_ci(rows, ["auc"])
    best = summary[summary["best"]]
    # simclr + range 0.25-0.5 has the largest offsets at both fractions
    assert sorted(zip(best["fraction"], best["init"], best["strategy"])) == [
        (0.1, "simclr", "range 0.25-0.5"), (1.0, "simclr", "range 0.25-0.5")]


def test_lower_is_better_metric_marks_the_lowest():
    rows = pd.DataFrame({"dataset": "d", "init": ["a", "a", "b", "b"], "strategy": "s", "fraction": 1.0,
                         "seed": [0, 1, 0, 1], "metric.mae": [0.5, 0.7, 0.3, 0.4]})
    summary = summary_with_ci(rows)
    assert summary.loc[summary["best"], "init"].tolist() == ["b"]
    with pytest.raises(ConfigError, match="'kappa'.*present: mae"):
        summary_with_ci(rows, ["kappa"])


def test_cell_without_finished_runs_stays_as_missing():
    rows = pd.DataFrame({"dataset": "d", "init": ["a", "a", "b", "b"], "strategy": "s", "fraction": 1.0,
                         "seed": [0, 1, 0, 1], "status": ["done", "done", "failed", "running"],
                         "metric.auc": [0.8, 0.9, np.nan, np.nan]})
    summary = summary_with_ci(rows)
    empty = summary[summary["init"] == "b"].iloc[0]
    assert empty["n"] == 0 and math.isnan(empty["mean"]) and not empty["best"]
    texts, _, short = wide_table(summary, "auc")
    assert texts.loc[("d", "b", "s"), "100%"] == "missing (n=0 of 2)" and short.loc[("d", "b", "s"), "100%"]


def test_writers_mark_best_and_short_cells(experiment):
    _, rows = experiment
    summary = summary_with_ci(rows, ["auc"])
    values = [auc_value("simclr", "range 0.25-0.5", 0.1, s) for s in SEEDS]
    mean, sd = np.mean(values), np.std(values, ddof=1)
    markdown = to_markdown(summary, "auc")
    assert f"**{mean:.3f} ± {sd:.3f}" in markdown and "(n=2 of 3)" in markdown
    assert markdown.count("**") == 4  # one bold cell per label fraction
    latex = to_latex(summary, "auc")
    assert "\\begin{tabular}" in latex and latex.count("\\bfseries") == 2
    assert f"{mean:.3f} $\\pm$ {sd:.3f}" in latex and "10\\%" in latex and "end\\_to\\_end" in latex
    html = to_html(summary, "auc")
    assert 'class="summary"' in html and "font-weight: bold" in html and "#fde8c8" in html


def test_missing_runs_lists_failed_not_started_and_undefined(experiment):
    _, rows = experiment
    missing = missing_runs(rows, "auc")
    assert missing[["init", "strategy", "fraction", "seed", "status"]].values.tolist() == [[*FAILED, "failed"]]
    assert missing["error"].tolist() == ["RuntimeError: out of memory"]
    # a run never started (absent from the store) and a finished run with an undefined metric
    trimmed = rows[~((rows["init"] == "random") & (rows["strategy"] == "linear") & (rows["fraction"] == 1.0)
                     & (rows["seed"] == 0))].copy()
    trimmed.loc[trimmed.index[0], "metric.auc"] = np.nan
    statuses = missing_runs(trimmed, "auc")["status"].value_counts().to_dict()
    assert statuses == {"failed": 1, "not started": 1, "metric undefined": 1}


def test_mixed_experiments_are_refused(experiment):
    _, rows = experiment
    first = rows.iloc[0]
    changed = {**first["config"], "train": {"epochs": 9, "monitor": "auc"}}
    mixed = pd.concat([rows, first.to_frame().T.assign(config=[changed], run_id="x")], ignore_index=True)
    with pytest.raises(ConfigError, match="differ in config keys train.epochs"):
        check_one_experiment(mixed)
    with pytest.raises(ConfigError, match="mixes experiments"):
        summary_with_ci(mixed)


def test_a_fusion_under_its_members_strategies_is_expected_in_its_own_cells_only(experiment):
    """Such a fusion runs once per cell (``bench.grid.init_strategies``): neither it under the other strategies nor
    the other inits under its strategy are missing runs."""
    _, rows = experiment
    own = "members: range 0.25-0.5 + linear"
    fusion = rows[(rows["init"] == "random") & (rows["strategy"] == "linear") & (rows["seed"] != 2)].copy()
    config = {**fusion["config"].iloc[0], "strategy": {"name": MEMBERS, "members": [
        {"name": "range", "range": "0.25-0.5"}, {"name": "linear"}]}}
    fusion = fusion.assign(init="both", strategy=own, config=[config] * len(fusion), run_id=["f1", "f2", "f3", "f4"])
    missing = missing_runs(pd.concat([rows, fusion], ignore_index=True), "auc")
    assert sorted(missing[["init", "strategy", "fraction", "seed", "status"]].values.tolist()) == [
        ["both", own, 0.1, 2, "not started"], ["both", own, 1.0, 2, "not started"], [*FAILED, "failed"]]
    summary = summary_with_ci(pd.concat([rows, fusion], ignore_index=True), ["auc"])
    assert {(i, s) for i, s in zip(summary["init"], summary["strategy"]) if i == "both" or s == own} == {
        ("both", own)}
    assert set(summary.loc[summary["init"] == "both", "n_expected"]) == {3}
