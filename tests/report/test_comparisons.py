"""Baseline comparisons: pairing by seed, the test used, Holm over the table, markers and relative improvement."""

import math

import numpy as np
import pandas as pd
import pytest
from toy_experiment import FAILED, INITS, STRATEGIES, auc_value
from scipy import stats

from medtransfer.errors import ConfigError
from medtransfer.evaluate.statistics import holm
from medtransfer.report.comparisons import comparison_table, to_latex, to_markdown


def _row(table, init, strategy, fraction):
    match = table[(table["init"] == init) & (table["strategy"] == strategy) & (table["fraction"] == fraction)]
    assert len(match) == 1
    return match.iloc[0]


def test_cell_baseline_pairs_by_seed_and_corrects_the_family(experiment):
    _, rows = experiment
    table = comparison_table(rows, "auc")  # default random/end_to_end
    assert len(table) == 2 * (len(INITS) * len(STRATEGIES) - 1)
    assert set(table["baseline"]) == {"random/end_to_end"} and set(table["design"]) == {"paired"}
    row = _row(table, "simclr", "end_to_end", 1.0)
    c = np.array([auc_value("simclr", "end_to_end", 1.0, s) for s in (0, 1, 2)])
    b = np.array([auc_value("random", "end_to_end", 1.0, s) for s in (0, 1, 2)])
    assert row["p"] == pytest.approx(stats.ttest_rel(c, b).pvalue)
    assert row["p_rank"] == pytest.approx(stats.wilcoxon(c, b).pvalue)
    assert row["improvement_%"] == pytest.approx(100 * (c.mean() - b.mean()) / b.mean())
    np.testing.assert_allclose(table["p_holm"], holm(table["p"]))
    assert all(m == ("n.s." if p >= 0.05 else "*" if p >= 0.01 else "**" if p >= 0.0001 else "***")
               for m, p in zip(table["marker"], table["p_holm"]) if not math.isnan(p))


def test_failed_seed_is_left_out_of_the_pairs_with_a_note(experiment):
    _, rows = experiment
    row = _row(comparison_table(rows, "auc"), *FAILED[:3])
    assert row["n"] == 2 and "seed(s) 2 lack a partner" in row["notes"]
    c = [auc_value(*FAILED[:3], s) for s in (0, 1)]
    b = [auc_value("random", "end_to_end", 0.1, s) for s in (0, 1)]
    assert row["p"] == pytest.approx(stats.ttest_rel(c, b).pvalue)


def test_init_baseline_compares_under_the_same_strategy(experiment):
    _, rows = experiment
    table = comparison_table(rows, "auc", "random")
    assert len(table) == 2 * len(STRATEGIES) and set(table["init"]) == {"simclr"}
    assert (table["baseline"] == "random/" + table["strategy"]).all()
    row = _row(table, "simclr", "range 0.25-0.5", 1.0)
    assert row["baseline_mean"] == pytest.approx(np.mean([auc_value("random", "range 0.25-0.5", 1.0, s)
                                                          for s in (0, 1, 2)]))


def test_unpaired_when_no_seed_is_shared_and_single_seed_has_no_test():
    rows = pd.DataFrame({"dataset": "d", "init": ["random"] * 3 + ["ssl"] * 3, "strategy": "e2e", "fraction": 1.0,
                         "seed": [0, 1, 2, 3, 4, 5], "metric.auc": [0.70, 0.72, 0.75, 0.80, 0.79, 0.85]})
    row = comparison_table(rows, "auc", "random/e2e").iloc[0]
    assert (row["design"], row["test"], row["effect_name"]) == ("unpaired", "Welch t-test", "Hedges' g")
    assert row["p"] == pytest.approx(stats.ttest_ind([0.80, 0.79, 0.85], [0.70, 0.72, 0.75], equal_var=False).pvalue)
    single = comparison_table(rows[rows["seed"].isin([0, 3])].assign(seed=0), "auc", "random/e2e").iloc[0]
    assert single["design"] == "paired" and math.isnan(single["p"]) and single["marker"] == ""
    assert "no test" in single["notes"] and single["improvement_%"] == pytest.approx(100 * 0.1 / 0.7)


def test_unknown_baseline_names_the_allowed_values(experiment):
    _, rows = experiment
    with pytest.raises(ConfigError, match="baseline init 'imagenet'.*allowed: random, simclr"):
        comparison_table(rows, "auc", "imagenet/end_to_end")
    with pytest.raises(ConfigError, match="baseline strategy 'q9'.*allowed: end_to_end, linear"):
        comparison_table(rows, "auc", "random/q9")


def test_markdown_and_latex_of_the_comparisons(experiment):
    _, rows = experiment
    table = comparison_table(rows, "auc")
    markdown = to_markdown(table)
    assert markdown.count("\n") == len(table) + 2 and "3 paired" in markdown and "d_z" in markdown
    latex = to_latex(table)
    assert "\\toprule" in latex and "random/end\\_to\\_end" in latex and "notes" not in latex
