"""Warnings for runs whose model selection failed silently: crafted logs and predictions, then one real run."""

import dataclasses

import numpy as np
import pandas as pd

from medtransfer.data.base import Split
from medtransfer.finetune.diagnostics import constant_prediction, diagnose, segmentation_stalled, undefined_selection
from medtransfer.finetune.strategies import parse_strategy
from medtransfer.finetune.train import fine_tune

NAN = np.nan


def log(**columns) -> pd.DataFrame:
    """A Lightning-style metrics.csv: one train row and one val row per epoch."""
    epochs = len(next(iter(columns.values())))
    frame = {"epoch": [e for e in range(epochs) for _ in (0, 1)]}
    for name, values in columns.items():
        train_row = name.startswith("train/")
        frame[name] = [v if (row == 0) == train_row else NAN for v in values for row in (0, 1)]
    return pd.DataFrame(frame)


def test_undefined_monitor_in_every_epoch_names_the_single_validation_class():
    found = undefined_selection(log(**{"val/auc": [NAN, NAN, NAN], "val/loss": [1, 0.9, 0.8]}), "val/auc",
                                np.zeros(10, np.int64), ("healthy", "nodule"))
    assert len(found) == 1
    assert "val auc undefined in every epoch: the validation split has one class ('healthy')" in found[0]
    assert "first epoch's weights were tested" in found[0]


def test_undefined_monitor_without_a_known_reason_still_warns():
    found = undefined_selection(log(**{"val/loss": [1.0, 0.9]}), "val/auc", np.array([0, 1, 1]))
    assert found and "val auc undefined in every epoch;" in found[0] and "one class" not in found[0]


def test_a_monitor_defined_in_one_epoch_is_enough():
    assert undefined_selection(log(**{"val/auc": [NAN, 0.7, NAN]}), "val/auc", np.zeros(4, np.int64)) == []
    assert undefined_selection(pd.DataFrame(), "val/auc") == []  # no log at all (a DDP rank without one)


def test_constant_predictor_is_flagged_with_its_class_and_share():
    y = np.array([0, 0, 0, 1, 2])
    scores = np.tile([0.5, 0.3, 0.2], (5, 1)) + np.linspace(0, 0.1, 5)[:, None] * [0, 1, 0]  # ranks, never wins
    found = constant_prediction("ordinal", y, scores, ("none", "mild", "severe"))
    assert len(found) == 1 and "predicts one class ('none') for every test image (60% of the test labels)" in found[0]


def test_varied_predictions_and_one_class_tests_are_not_flagged():
    y = np.array([0, 1, 1])
    assert constant_prediction("binary", y, np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7]])) == []
    assert constant_prediction("binary", np.ones(3, int), np.tile([0.2, 0.8], (3, 1))) == []  # one class in test
    assert constant_prediction("multilabel", np.ones((3, 2), int), np.full((3, 2), 0.9)) == []  # one label set


def test_multilabel_predictor_of_one_label_set_is_flagged_with_the_set_and_its_share():
    y = np.array([[0, 0, 0], [0, 0, 0], [1, 0, 1], [0, 1, 0]])
    silent = np.full((4, 3), 0.05) + np.linspace(0, 0.3, 4)[:, None]  # ranks, never crosses 0.5
    found = constant_prediction("multilabel", y, silent, ("effusion", "nodule", "mass"))
    assert len(found) == 1
    assert "predicts one label set (none) for every test image (50% of the test images have exactly it)" in found[0]
    fixed = np.tile([0.9, 0.2, 0.7], (4, 1))
    found = constant_prediction("multilabel", y, fixed, ("effusion", "nodule", "mass"))
    assert len(found) == 1 and "one label set ('effusion', 'mass') for every test image (25% of" in found[0]


def test_multilabel_predictions_that_differ_between_images_are_not_flagged():
    y = np.array([[0, 0, 0], [1, 0, 1], [0, 1, 0]])
    varied = np.array([[0.1, 0.2, 0.1], [0.1, 0.2, 0.1], [0.1, 0.7, 0.1]])  # one image gets 'nodule'
    assert constant_prediction("multilabel", y, varied) == []


def test_segmentation_stalled_needs_low_dice_and_a_falling_loss():
    stalled = log(**{"train/loss": [0.7, 0.4, 0.2], "val/dice": [0.0, 0.01, 0.02]})
    found = segmentation_stalled(stalled)
    assert len(found) == 1 and "val dice stayed below 0.05 (at most 0.020) while the training loss fell" in found[0]
    assert segmentation_stalled(log(**{"train/loss": [0.7, 0.4, 0.2], "val/dice": [0.0, 0.01, 0.3]})) == []
    assert segmentation_stalled(log(**{"train/loss": [0.7, 0.7, 0.8], "val/dice": [0.0, 0.01, 0.02]})) == []


def test_diagnose_applies_the_checks_of_the_task():
    stalled = log(**{"train/loss": [0.7, 0.2], "val/dice": [0.0, 0.01], "val/loss": [0.7, 0.6]})
    assert len(diagnose(stalled, "val/dice", "segmentation", np.zeros((2, 4, 4), np.int64), {})) == 1
    healthy = log(**{"train/loss": [0.7, 0.2], "val/auc": [0.6, 0.8]})
    predictions = {"y_true": np.array([0, 1]), "scores": np.array([[0.9, 0.1], [0.8, 0.2]])}
    assert len(diagnose(healthy, "val/auc", "binary", np.array([0, 1]), predictions)) == 1
    predictions["scores"] = np.array([[0.9, 0.1], [0.2, 0.8]])
    assert diagnose(healthy, "val/auc", "binary", np.array([0, 1]), predictions) == []


def test_fine_tune_with_a_one_class_validation_split_warns_and_reports_the_tested_epoch(tiny2d, make_backbone,
                                                                                         fast_train, cpu, tmp_path):
    healthy = tiny2d.val.labels == 0
    data = dataclasses.replace(tiny2d, val=Split(tiny2d.val.images[healthy], tiny2d.val.labels[healthy]))
    backbone = make_backbone()
    result = fine_tune(data, np.arange(len(data.train)), backbone, parse_strategy("linear"), backbone.default_view,
                       fast_train, cpu, 0, tmp_path)
    assert any("val auc undefined in every epoch: the validation split has one class ('healthy')" in w
               for w in result.warnings), result.warnings
    assert result.best_epoch == 0  # Lightning keeps the first epoch when every score is NaN
