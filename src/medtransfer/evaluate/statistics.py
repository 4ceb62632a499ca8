"""Statistics for comparing inits and strategies over seeds: confidence intervals, paired and unpaired tests,
Holm correction, effect sizes and the significance markers of the transfer-learning studies.

On small medical sets one AUC point between two inits is often seed noise, so a difference is only reported
together with a test, and every test over a family of comparisons is Holm-corrected. The tests are scipy's;
this module decides which test applies, and says why when none does (one seed, identical differences).

Sign conventions: ``diff`` and the effect sizes are *candidate minus baseline* in the metric's own units;
relative improvement is signed so that positive always means better (also for error metrics such as mae).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

# Hosseinzadeh Taher et al. 2021 (DART @ MICCAI): n.s., * p<0.05, ** p<0.01, *** p<0.0001
MARKERS = ((0.0001, "***"), (0.01, "**"), (0.05, "*"))
NOT_SIGNIFICANT = "n.s."
WILCOXON_MIN_PAIRS = 6  # two-sided exact p >= 2 / 2**n: with fewer non-zero pairs it can never reach 0.05


def _values(values) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).ravel()
    if np.isnan(v).any():
        raise ValueError("values contain NaN; drop undefined runs first and report how many were dropped")
    return v


def mean_ci(values, confidence: float = 0.95) -> tuple[float, float, float, float, int]:
    """(mean, std, ci_low, ci_high, n): std with ddof=1 and a t-based interval mean ± t_{(1+c)/2, n-1}·std/√n.

    The t quantile (not 1.96) matters here: with 3 seeds it is 4.30, so the interval is twice as wide.
    std and the interval are NaN for fewer than two values; the mean is NaN for none.
    """
    v = _values(values)
    n = v.size
    if n == 0:
        return math.nan, math.nan, math.nan, math.nan, 0
    mean = float(v.mean())
    if n < 2:
        return mean, math.nan, math.nan, math.nan, 1
    std = float(v.std(ddof=1))
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * std / math.sqrt(n)
    return mean, std, mean - half, mean + half, n


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error control without assuming independence).

    Sorted ascending, the i-th smallest of m p-values (i from 0) becomes max over j <= i of min(1, (m - j)·p_j).
    NaN entries (comparisons where no test could run) are not part of the family and stay NaN.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    adjusted = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    m = order.size
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted


def marker(p: float) -> str:
    """The studies' significance marker for a p-value; empty when there is no p-value."""
    if p is None or math.isnan(p):
        return ""
    return next((mark for threshold, mark in MARKERS if p < threshold), NOT_SIGNIFICANT)


def relative_improvement(value: float, baseline: float, lower_is_better: bool = False) -> float:
    """Improvement over the baseline in % of the baseline, positive = better (Khan & Fang's "beats by 5.48 %")."""
    if baseline == 0 or math.isnan(baseline) or math.isnan(value):
        return math.nan
    gain = baseline - value if lower_is_better else value - baseline
    return 100.0 * gain / abs(baseline)


def cohens_dz(diff) -> float:
    """Paired effect size d_z = mean(diff) / sd(diff) (ddof=1); NaN when it is undefined (n < 2 or sd 0)."""
    d = _values(diff)
    if d.size < 2:
        return math.nan
    sd = float(d.std(ddof=1))
    return float(d.mean()) / sd if sd > 0 else math.nan


def hedges_g(a, b) -> float:
    """Unpaired effect size: Cohen's d with the pooled sd, times the small-sample correction 1 - 3/(4(na+nb)-9)."""
    a, b = _values(a), _values(b)
    na, nb = a.size, b.size
    if na < 2 or nb < 2:
        return math.nan
    pooled = math.sqrt(((na - 1) * a.var(ddof=1) + (nb - 1) * b.var(ddof=1)) / (na + nb - 2))
    if pooled == 0:
        return math.nan
    return float((a.mean() - b.mean()) / pooled * (1 - 3 / (4 * (na + nb) - 9)))


@dataclass
class TestResult:
    """One candidate-vs-baseline comparison. ``design`` is "paired" or "unpaired"; the main test (t-test or
    Welch) drives the marker, the rank test (Wilcoxon or Mann-Whitney) is reported beside it as a check that
    does not assume normal differences. ``notes`` say why a test did not run or what limits it."""

    design: str
    n: int
    diff: float
    test: str = ""
    p: float = math.nan
    rank_test: str = ""
    p_rank: float = math.nan
    effect_name: str = ""
    effect: float = math.nan
    notes: list[str] = field(default_factory=list)


def paired_test(candidate, baseline) -> TestResult:
    """Paired t-test and Wilcoxon signed-rank test on per-seed differences (candidate − baseline), with d_z.

    Needs two or more pairs. When every difference is the same (all zero, or a constant shift) sd is 0 and
    the t statistic undefined, so no t-test is reported (scipy would return 0 or inf). Wilcoxon drops zero
    differences (scipy's default "wilcox" rule) and is skipped when none is left.
    """
    c, b = _values(candidate), _values(baseline)
    if c.size != b.size:
        raise ValueError(f"paired samples need equal lengths, got {c.size} and {b.size}")
    diff = c - b
    result = TestResult("paired", diff.size, float(diff.mean()) if diff.size else math.nan,
                        test="paired t-test", rank_test="Wilcoxon signed-rank", effect_name="d_z")
    if diff.size < 2:
        result.notes.append(f"{diff.size} seed pair(s): no test (a test needs at least 2 seeds)")
        return result
    if np.allclose(diff, diff[0], rtol=0, atol=1e-12):
        result.notes.append("the difference is the same in every pair (sd 0): t-test and d_z undefined")
    else:
        result.p = float(stats.ttest_rel(c, b).pvalue)
        result.effect = cohens_dz(diff)
    nonzero = int(np.count_nonzero(np.abs(diff) > 1e-12))
    if nonzero == 0:
        result.notes.append("all differences are zero: no Wilcoxon test")
    else:
        result.p_rank = float(stats.wilcoxon(c, b).pvalue)
        if nonzero < WILCOXON_MIN_PAIRS:
            result.notes.append(f"Wilcoxon with {nonzero} non-zero pairs cannot reach p < 0.05 "
                                f"(needs ≥ {WILCOXON_MIN_PAIRS})")
    return result


def unpaired_test(candidate, baseline) -> TestResult:
    """Welch's t-test (unequal variances) and Mann-Whitney U with Hedges' g, for runs that cannot be paired."""
    c, b = _values(candidate), _values(baseline)
    diff = float(c.mean() - b.mean()) if c.size and b.size else math.nan
    result = TestResult("unpaired", min(c.size, b.size), diff, test="Welch t-test", rank_test="Mann-Whitney U",
                        effect_name="Hedges' g")
    if c.size < 2 or b.size < 2:
        result.notes.append(f"{c.size} vs {b.size} seed(s): no test (each side needs at least 2 seeds)")
        return result
    if c.var(ddof=1) == 0 and b.var(ddof=1) == 0:
        result.notes.append("no spread on either side: Welch t-test and Hedges' g undefined")
    else:
        result.p = float(stats.ttest_ind(c, b, equal_var=False).pvalue)
        result.effect = hedges_g(c, b)
    result.p_rank = float(stats.mannwhitneyu(c, b, alternative="two-sided").pvalue)
    return result
