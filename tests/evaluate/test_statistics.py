"""Statistics against values computed independently: scipy on hand-made arrays, hand-computed Holm and effect sizes."""

import math

import numpy as np
import pytest
from scipy import stats

from medtransfer.evaluate.statistics import (
    cohens_dz, hedges_g, holm, marker, mean_ci, paired_test, relative_improvement, unpaired_test)

CANDIDATE = np.array([0.84, 0.88, 0.81, 0.90, 0.86, 0.83, 0.89])
BASELINE = np.array([0.80, 0.85, 0.82, 0.84, 0.81, 0.80, 0.83])


def test_mean_ci_is_the_t_interval():
    values = np.array([0.80, 0.85, 0.90, 0.82])
    mean, std, low, high, n = mean_ci(values)
    expected_low, expected_high = stats.t.interval(0.95, df=3, loc=values.mean(), scale=stats.sem(values))
    assert (mean, n) == (pytest.approx(0.8425), 4)
    assert std == pytest.approx(np.sqrt(((values - 0.8425) ** 2).sum() / 3))
    assert (low, high) == (pytest.approx(expected_low), pytest.approx(expected_high))
    # the quantile is t(0.975, 3) = 3.182, not 1.96: the interval is 1.6x wider than a normal one
    assert high - mean == pytest.approx(3.1824463 * std / 2, rel=1e-6)
    _, _, low90, high90, _ = mean_ci(values, confidence=0.90)
    assert low < low90 < high90 < high


def test_mean_ci_single_value_and_empty():
    mean, std, low, high, n = mean_ci([0.7])
    assert mean == 0.7 and n == 1 and all(math.isnan(x) for x in (std, low, high))
    assert mean_ci([])[4] == 0 and math.isnan(mean_ci([])[0])
    with pytest.raises(ValueError, match="NaN"):
        mean_ci([0.5, float("nan")])


def test_holm_against_hand_computed_values():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> raised to the running max 0.06
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    # NaN (no test) is not a member of the family: m = 2
    np.testing.assert_allclose(holm([0.01, np.nan, 0.04]), [0.02, np.nan, 0.04])
    np.testing.assert_allclose(holm([0.5, 0.6]), [1.0, 1.0])  # capped at 1, monotone
    np.testing.assert_allclose(holm([0.02]), [0.02])
    assert holm([]).shape == (0,)


def test_markers_use_the_study_thresholds():
    assert [marker(p) for p in (0.2, 0.05, 0.049, 0.01, 0.0099, 0.0001, 0.00009)] == [
        "n.s.", "n.s.", "*", "*", "**", "**", "***"]
    assert marker(float("nan")) == ""


def test_relative_improvement_is_positive_when_better():
    assert relative_improvement(0.90, 0.80) == pytest.approx(12.5)
    assert relative_improvement(0.76, 0.80) == pytest.approx(-5.0)
    assert relative_improvement(0.4, 0.5, lower_is_better=True) == pytest.approx(20.0)  # error down 20 %
    assert math.isnan(relative_improvement(0.5, 0.0))


def test_paired_test_matches_scipy_and_hand_computed_dz():
    result = paired_test(CANDIDATE, BASELINE)
    diff = CANDIDATE - BASELINE  # 0.04, 0.03, -0.01, 0.06, 0.05, 0.03, 0.06
    assert result.design == "paired" and result.n == 7
    assert result.diff == pytest.approx(0.26 / 7)
    assert result.p == pytest.approx(stats.ttest_rel(CANDIDATE, BASELINE).pvalue)
    assert result.p_rank == pytest.approx(stats.wilcoxon(diff).pvalue)
    sd = math.sqrt(sum((d - 0.26 / 7) ** 2 for d in diff) / 6)
    assert result.effect == pytest.approx((0.26 / 7) / sd) == cohens_dz(diff)
    assert result.notes == []


def test_paired_test_explains_what_it_cannot_do():
    one = paired_test([0.9], [0.8])
    assert math.isnan(one.p) and math.isnan(one.p_rank) and "no test" in one.notes[0]
    shift = paired_test([0.9, 0.8, 0.7], [0.8, 0.7, 0.6])  # constant difference: sd 0, t undefined
    assert math.isnan(shift.p) and math.isnan(shift.effect) and "same in every pair" in shift.notes[0]
    same = paired_test([0.9, 0.8, 0.7], [0.9, 0.8, 0.7])
    assert math.isnan(same.p) and math.isnan(same.p_rank)
    assert any("all differences are zero" in n for n in same.notes)
    small = paired_test(CANDIDATE[:4], BASELINE[:4])
    assert small.p_rank >= 0.125 and any("cannot reach p < 0.05" in n for n in small.notes)
    with pytest.raises(ValueError, match="equal lengths"):
        paired_test([1, 2], [1, 2, 3])


def test_unpaired_test_matches_scipy_and_hand_computed_g():
    a, b = np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 6.0, 8.0])
    result = unpaired_test(a, b)
    assert result.design == "unpaired" and result.test == "Welch t-test"
    assert result.p == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    assert result.p_rank == pytest.approx(stats.mannwhitneyu(a, b, alternative="two-sided").pvalue)
    # pooled sd = sqrt((2*1 + 3*20/3) / 5) = sqrt(4.4); d = -3 / sqrt(4.4); J = 1 - 3/19
    assert result.effect == pytest.approx(-3 / math.sqrt(4.4) * (1 - 3 / 19)) == hedges_g(a, b)
    assert result.diff == -3.0
    lone = unpaired_test([0.9], [0.8, 0.7])
    assert math.isnan(lone.p) and "no test" in lone.notes[0]
