"""Test-set metrics for the four MedMNIST task types, as defined in MedMNIST v2 (Yang et al., 2023).

Results are only comparable with the published MedMNIST baselines if AUC and ACC are computed
exactly their way, so those two follow the paper; the other metrics extend it consistently.
Metrics live in a plain registry so an experiment file can name them as strings.

Undefined per-class values are NaN, never 0: a class absent from ``y_true`` has no ROC curve,
and counting it as 0 (or 0.5) would silently move a macro average. Macro averages are taken
over the classes that can be scored, and are NaN when none can.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from medtransfer.errors import ConfigError, allowed

TASKS = ("binary", "multiclass", "multilabel", "ordinal")
THRESHOLD = 0.5  # multilabel decision threshold on sigmoid probabilities; strict ">" as in MedMNIST

MetricFn = Callable[[str, np.ndarray, np.ndarray], tuple[float, list[float] | None]]


def _check(task: str, y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate inputs up front: a wrong shape would otherwise broadcast into a plausible number."""
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; allowed: {allowed(TASKS)}")
    y, s = np.asarray(y_true), np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] == 0:
        raise ValueError(f"scores must have shape (N, K) with N > 0, got {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError(
            f"scores contain {int((~np.isfinite(s)).sum())} NaN or infinite values; "
            "a diverged model cannot be scored"
        )
    if y.dtype.kind not in "biu":
        raise ValueError(f"y_true must hold integer labels, got dtype {y.dtype}")
    if task == "multilabel":
        if y.shape != s.shape:
            raise ValueError(f"multilabel y_true must match scores' shape {s.shape}, got {y.shape}")
        if not np.isin(y, (0, 1)).all():
            raise ValueError("multilabel y_true must be 0/1")
        return y.astype(np.int64), s
    n, k = s.shape
    if y.shape != (n,):
        raise ValueError(f"{task} y_true must be class indices of shape ({n},), got {y.shape}")
    if task == "binary" and k != 2:
        raise ValueError(f"binary scores need 2 columns (column 1 = positive), got {k}")
    if k < 2:
        raise ValueError(f"{task} scores need at least 2 columns, got {k}")
    if y.min() < 0 or y.max() >= k:
        raise ValueError(f"y_true holds classes outside 0..{k - 1} (min {y.min()}, max {y.max()})")
    return y.astype(np.int64), s


def _predictions(task: str, scores: np.ndarray) -> np.ndarray:
    """Hard predictions: argmax for single-label tasks, ``> THRESHOLD`` per label for multilabel."""
    return (scores > THRESHOLD).astype(np.int64) if task == "multilabel" else scores.argmax(axis=1)


def _indicator(task: str, y: np.ndarray, k: int) -> np.ndarray:
    """(N, K) boolean one-vs-rest matrix, so every task is scored column by column the same way."""
    return y.astype(bool) if task == "multilabel" else y[:, None] == np.arange(k)


def _counts(task: str, y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per-class (per-label) TP, FP, FN, TN of the hard predictions."""
    t = _indicator(task, y, s.shape[1])
    p = _indicator(task, _predictions(task, s), s.shape[1])
    return (t & p).sum(0), (~t & p).sum(0), (t & ~p).sum(0), (~t & ~p).sum(0)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Elementwise ``num / den``, NaN where ``den == 0`` (undefined, not zero)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.full(num.shape, np.nan), where=den > 0)


def _nanmean(values) -> float:
    """Mean of the defined values; NaN, without numpy's warning, when none is defined."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else math.nan


def _require_ordinal(name: str, task: str) -> None:
    if task != "ordinal":
        raise ConfigError(f"metric {name!r} needs an ordered label scale; task {task!r} is not 'ordinal'")


def auc(task: str, y_true: np.ndarray, scores: np.ndarray) -> tuple[float, list[float]]:
    """One-vs-rest ROC AUC per class/label; overall is their mean (binary: column 1's AUC).

    A class whose target column is constant (absent, or the only class) gets NaN.
    """
    y, s = _check(task, y_true, scores)
    targets = _indicator(task, y, s.shape[1])
    per = [
        float(roc_auc_score(t, col)) if 0 < t.sum() < t.size else math.nan
        for t, col in zip(targets.T, s.T)
    ]
    return (per[1] if task == "binary" else _nanmean(per)), per


def acc(task: str, y_true: np.ndarray, scores: np.ndarray) -> tuple[float, None]:
    """Argmax accuracy; multilabel: per-label accuracy at the threshold, averaged over labels."""
    y, s = _check(task, y_true, scores)
    return float((_predictions(task, s) == y).mean()), None


def bacc(task: str, y_true: np.ndarray, scores: np.ndarray) -> tuple[float, list[float]]:
    """Balanced accuracy, robust to the class imbalance typical of medical data.

    Single-label: mean recall over classes present in ``y_true`` (as scikit-learn).
    Multilabel: per label the mean of sensitivity and specificity, averaged over labels.
    The per-class values returned are the recalls (sensitivities), NaN for absent classes.
    """
    y, s = _check(task, y_true, scores)
    tp, fp, fn, tn = _counts(task, y, s)
    recall = _ratio(tp, tp + fn)
    if task == "multilabel":
        overall = float(np.mean([_nanmean(pair) for pair in zip(recall, _ratio(tn, tn + fp))]))
    else:
        overall = _nanmean(recall)
    return overall, recall.tolist()


def f1(task: str, y_true: np.ndarray, scores: np.ndarray) -> tuple[float, list[float]]:
    """Macro F1 over classes (labels); a class neither present nor predicted is NaN and left out."""
    y, s = _check(task, y_true, scores)
    tp, fp, fn, _ = _counts(task, y, s)
    per = _ratio(2 * tp, 2 * tp + fp + fn)
    return _nanmean(per), per.tolist()


def ap(task: str, y_true: np.ndarray, scores: np.ndarray) -> tuple[float, list[float]]:
    """Average precision (area under the precision-recall curve, scikit-learn's step-wise definition) per class
    (label), one-vs-rest; overall is their mean (binary: column 1's). Unlike ROC AUC it falls with the prevalence
    of the class, which makes it the rare class's score; a class absent from ``y_true`` gets NaN."""
    y, s = _check(task, y_true, scores)
    targets = _indicator(task, y, s.shape[1])
    per = [float(average_precision_score(t, col)) if t.any() else math.nan for t, col in zip(targets.T, s.T)]
    return (per[1] if task == "binary" else _nanmean(per)), per


def precision(task: str, y_true: np.ndarray, scores: np.ndarray) -> tuple[float, list[float]]:
    """Macro precision of the hard predictions; a class never predicted has no precision (NaN, left out)."""
    y, s = _check(task, y_true, scores)
    tp, fp, _, _ = _counts(task, y, s)
    per = _ratio(tp, tp + fp)
    return _nanmean(per), per.tolist()


def kappa(task: str, y_true: np.ndarray, scores: np.ndarray) -> tuple[float, None]:
    """Quadratic-weighted Cohen kappa of the argmax grade: confusing grade 0 with 4 costs 16x 0 with 1.

    Weights use the class index, not the rank among present classes; NaN when chance
    agreement is already perfect (one grade only).
    """
    y, s = _check(task, y_true, scores)
    _require_ordinal("kappa", task)
    k = s.shape[1]
    observed = np.zeros((k, k))
    np.add.at(observed, (y, s.argmax(axis=1)), 1.0)
    expected = np.outer(observed.sum(1), observed.sum(0)) / observed.sum()
    weights = (np.arange(k)[:, None] - np.arange(k)[None, :]) ** 2
    chance = float((weights * expected).sum())
    return (1.0 - float((weights * observed).sum()) / chance if chance > 0 else math.nan), None


def mae(task: str, y_true: np.ndarray, scores: np.ndarray) -> tuple[float, None]:
    """Mean absolute error in grades between the argmax class and the true class."""
    y, s = _check(task, y_true, scores)
    _require_ordinal("mae", task)
    return float(np.abs(s.argmax(axis=1) - y).mean()), None


METRICS: dict[str, MetricFn] = {
    "auc": auc,  # MedMNIST AUC: mean one-vs-rest ROC AUC (binary: column 1)
    "acc": acc,  # MedMNIST ACC: argmax accuracy (multilabel: mean per-label accuracy at 0.5)
    "bacc": bacc,  # balanced accuracy (multilabel: mean per-label balanced accuracy)
    "f1": f1,  # macro F1 (multilabel: macro over labels at 0.5)
    "ap": ap,  # AUPRC: mean per-class average precision (binary: column 1)
    "precision": precision,  # macro precision of the hard predictions
    "kappa": kappa,  # ordinal only: quadratic-weighted Cohen kappa
    "mae": mae,  # ordinal only: mean absolute grade error
}
ORDINAL_ONLY = frozenset({"kappa", "mae"})
PER_CLASS_KEY = {"auc": "auc", "f1": "f1", "bacc": "recall", "ap": "ap", "precision": "precision"}  # bacc's: recalls


def compute_metrics(
    task: str, y_true: np.ndarray, scores: np.ndarray, names: Sequence[str] | None = None
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Compute the named metrics (default: all) and their per-class values.

    Ordinal-only metrics (kappa, mae) are skipped for other tasks rather than raising, so one
    metric list can serve a benchmark that mixes ordinal and non-ordinal datasets. ``per_class``
    holds "auc", "f1", "ap", "precision" and "recall" (sensitivity, from "bacc") for whichever was computed.
    """
    names = list(METRICS) if names is None else list(names)
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ConfigError(f"unknown metric(s) {', '.join(map(repr, unknown))}; allowed: {allowed(METRICS)}")
    y, s = _check(task, y_true, scores)
    overall: dict[str, float] = {}
    per_class: dict[str, list[float]] = {}
    for name in names:
        if name in ORDINAL_ONLY and task != "ordinal":
            continue
        overall[name], per = METRICS[name](task, y, s)
        if per is not None:
            per_class[PER_CLASS_KEY[name]] = per
    return overall, per_class
