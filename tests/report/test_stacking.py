"""Policies in tables: never pooled, compared with the baseline under the same policy, stacked side by side."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from medtransfer.evaluate.statistics import holm
from medtransfer.report.comparisons import comparison_table
from medtransfer.report.stacking import stacking_display, stacking_table
from medtransfer.report.tables import format_table, summary_table, summary_with_ci

SEEDS = (0, 1, 2)
POLICIES = ("none", "mixup 0.2")


def auc(init, policy, seed):
    """SSL gains 0.10 without a policy and 0.01 under mixup, which lifts random init by 0.08."""
    gain = {"none": 0.10, "mixup 0.2": 0.01}[policy] if init == "ssl" else 0.0
    lift = 0.08 if policy != "none" else 0.0
    return 0.70 + gain + lift + 0.01 * seed + 0.003 * (seed == 1) * (init == "ssl")


@pytest.fixture
def rows():
    records = [{"dataset": "d", "init": init, "strategy": "end_to_end", "policy": policy, "fraction": 1.0,
                "seed": seed, "status": "done", "metric.auc": auc(init, policy, seed)}
               for init in ("random", "ssl") for policy in POLICIES for seed in SEEDS]
    return pd.DataFrame(records)


def test_tables_keep_policies_apart(rows):
    summary = summary_table(rows, "auc")
    assert list(summary.columns[:5]) == ["dataset", "init", "strategy", "policy", "fraction"]
    assert set(summary["n"]) == {3}  # 3 seeds per cell, never 6 from two policies
    assert "mixup 0.2" in format_table(summary, "auc")
    assert set(summary_with_ci(rows, ["auc"])["n"]) == {3}


def test_runs_without_policies_show_no_policy_column(rows):
    plain = rows[rows["policy"] == "none"]
    assert "policy" not in summary_table(plain, "auc") and "policy" not in comparison_table(plain, "auc")


def test_stacking_compares_each_init_with_the_baseline_init_under_the_same_policy(rows):
    table = stacking_table(rows, "auc", "random")
    assert sorted(table["policy"]) == sorted(POLICIES) and set(table["init"]) == {"ssl"}
    for row in table.itertuples():
        c = np.array([auc("ssl", row.policy, s) for s in SEEDS])
        b = np.array([auc("random", row.policy, s) for s in SEEDS])
        assert row.diff == pytest.approx((c - b).mean()) and row.p == pytest.approx(stats.ttest_rel(c, b).pvalue)
    np.testing.assert_allclose(table["p_holm"], holm(table["p"].to_numpy()))
    wide = stacking_display(table)
    assert list(wide.columns) == ["dataset", "labels", "strategy", "init", "none", "mixup 0.2"]
    assert wide.loc[0, "none"].startswith("+0.101 ") and wide.loc[0, "mixup 0.2"].startswith("+0.011 ")
