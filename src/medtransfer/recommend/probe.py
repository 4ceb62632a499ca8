"""Signal 1, the per-unit probe P(u): how linearly available the task is after unit u of the frozen init.

A logistic regression on standardised pooled features (``features.py``) of the labelled subset, scored on the
validation split with the experiment's monitor metric — the linear-probe protocol of representation-learning
evaluation (Alain & Bengio, "Understanding intermediate layers using linear classifier probes", 2016; Kornblith et
al., "Do Better ImageNet Models Transfer Better?", CVPR 2019). The head of a strategy reads one unit, so P at that
unit is what it starts from. ``max_iter`` is bounded: a probe is a cheap estimate, not a model to keep.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from medtransfer.evaluate import compute_metrics

MAX_ITER = 200


def probe_classifier(task: str, seed: int):
    """Standardise, then logistic regression (one per label for multi-label tasks)."""
    logistic = LogisticRegression(max_iter=MAX_ITER, random_state=seed)
    return make_pipeline(StandardScaler(), OneVsRestClassifier(logistic) if task == "multilabel" else logistic)


def probe_probabilities(model, task: str, num_classes: int, features: np.ndarray) -> np.ndarray:
    """(N, num_classes) probabilities; a class absent from the labelled subset gets probability 0."""
    probs = model.predict_proba(features)
    if task == "multilabel":
        return probs
    full = np.zeros((len(features), num_classes))
    full[:, model.classes_.astype(int)] = probs
    return full


def probe_score(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray, task: str,
                num_classes: int, monitor: str, seed: int) -> float:
    """The monitor metric of a probe fit on (train_x, train_y) and scored on the validation features; for the
    monitor ``loss``, the validation cross-entropy (lower is better, as for the grid's model selection)."""
    model = probe_classifier(task, seed)
    with warnings.catch_warnings():  # bounded iterations on purpose; a constant label column is legitimate
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.filterwarnings("ignore", message="Label .* is present in all training examples")
        model.fit(train_x, train_y)
    probs = probe_probabilities(model, task, num_classes, val_x)
    if monitor == "loss":
        if task == "multilabel":
            return float(np.mean([log_loss(val_y[:, k], probs[:, k], labels=[0, 1]) for k in range(num_classes)]))
        return float(log_loss(val_y, probs, labels=list(range(num_classes))))
    overall, _ = compute_metrics(task, val_y, probs, names=[monitor])
    return float(overall[monitor])


def unit_probe_scores(train_feats: list[np.ndarray], train_y: np.ndarray, val_feats: list[np.ndarray],
                      val_y: np.ndarray, task: str, num_classes: int, monitor: str, seed: int) -> np.ndarray:
    """P(u) for every unit."""
    return np.array([probe_score(tx, train_y, vx, val_y, task, num_classes, monitor, seed)
                     for tx, vx in zip(train_feats, val_feats)])
