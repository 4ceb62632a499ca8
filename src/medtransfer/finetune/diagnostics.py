"""Warnings about a finished fine-tuning run whose number looks fine but should not be trusted.

Model selection can fail without an error: a validation metric that is undefined in every epoch (one class in the
validation split) leaves the checkpoint callback nothing to compare, so the first epoch's weights are tested; AUC
ranks scores, so it can select a network that predicts the majority class for every image; a segmentation loss can
fall while the network predicts background everywhere (BCE on a few per cent of foreground). Each check reads what
a run leaves anyway — its per-epoch log, its labels and its test predictions — and returns one sentence per problem,
which the runner stores with the run (``extra["warnings"]``) and the CLI and report show.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from medtransfer.evaluate.metrics import THRESHOLD

DICE_FLOOR = 0.05  # a validation Dice that never rises above this is no segmentation


def undefined_selection(log: pd.DataFrame, monitor: str, val_labels: np.ndarray | None = None,
                        class_names: Sequence[str] = ()) -> list[str]:
    """The monitored validation metric (e.g. ``val/auc``) is NaN or absent in every validated epoch."""
    if "epoch" not in log or (monitor in log and log[monitor].notna().any()):
        return []
    name = monitor.removeprefix("val/")
    reason = ""
    if val_labels is not None and val_labels.ndim == 1 and len(np.unique(val_labels)) == 1:
        only = int(val_labels[0])
        label = class_names[only] if only < len(class_names) else str(only)
        reason = f": the validation split has one class ({label!r})"
    return [f"val {name} undefined in every epoch{reason}; model selection had nothing to compare, so the first "
            "epoch's weights were tested"]


def constant_prediction(task: str, y_true: np.ndarray, scores: np.ndarray,
                        class_names: Sequence[str] = ()) -> list[str]:
    """The selected checkpoint gives every test image the same class (multilabel: the same label set) although the
    test labels hold several."""
    if task == "multilabel":
        return _constant_label_set(np.asarray(y_true), np.asarray(scores), class_names)
    if len(scores) == 0 or len(np.unique(y_true)) < 2:
        return []
    predicted = np.unique(np.asarray(scores).argmax(axis=1))
    if len(predicted) > 1:
        return []
    only = int(predicted[0])
    label = class_names[only] if only < len(class_names) else str(only)
    share = float(np.mean(np.asarray(y_true) == only))
    return [f"selected epoch predicts one class ({label!r}) for every test image ({share:.0%} of the test labels); "
            "AUC ranks scores and can still look fine, accuracy is that class's share"]


def _constant_label_set(y_true: np.ndarray, scores: np.ndarray, class_names: Sequence[str]) -> list[str]:
    """Multilabel: every test image gets the same labels at the 0.5 threshold (often none at all, when positives are
    rare), although the test images carry at least two different label sets."""
    if len(scores) == 0 or len(np.unique(y_true, axis=0)) < 2:
        return []
    predicted = np.unique(scores > THRESHOLD, axis=0)
    if len(predicted) > 1:
        return []
    on = np.flatnonzero(predicted[0])
    labels = ", ".join(repr(class_names[i] if i < len(class_names) else str(i)) for i in on) or "none"
    share = float(np.mean((y_true == predicted[0]).all(axis=1)))
    return [f"selected epoch predicts one label set ({labels}) for every test image ({share:.0%} of the test images "
            "have exactly it); AUC ranks scores and can still look fine, accuracy is the share of label entries that "
            "set gets right"]


def segmentation_stalled(log: pd.DataFrame, floor: float = DICE_FLOOR) -> list[str]:
    """Validation Dice below ``floor`` in every epoch while the training loss fell: background predicted everywhere."""
    if "val/dice" not in log or "train/loss" not in log:
        return []
    dice = log["val/dice"].dropna()
    loss = log.dropna(subset=["train/loss"]).groupby("epoch")["train/loss"].mean()
    if dice.empty or dice.max() >= floor or len(loss) < 2 or loss.iloc[-1] >= loss.iloc[0]:
        return []
    return [f"val dice stayed below {floor:g} (at most {dice.max():.3f}) while the training loss fell "
            f"({loss.iloc[0]:.3g} -> {loss.iloc[-1]:.3g}): the network likely predicts background everywhere"]


def diagnose(log: pd.DataFrame, monitor: str, task: str, val_labels: np.ndarray,
             predictions: dict[str, np.ndarray], class_names: Sequence[str] = ()) -> list[str]:
    """Every warning for one run: ``log`` is its Lightning ``metrics.csv``, ``monitor`` e.g. ``val/auc``,
    ``predictions`` its stored test predictions (``y_true`` and ``scores`` for classification)."""
    found = undefined_selection(log, monitor, val_labels if task != "segmentation" else None, class_names)
    if task == "segmentation":
        return found + segmentation_stalled(log)
    if "scores" in predictions and "y_true" in predictions:
        found += constant_prediction(task, predictions["y_true"], predictions["scores"], class_names)
    return found
