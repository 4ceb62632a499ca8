"""Segmentation metrics against independent numpy references and hand-computed cases."""

import math

import numpy as np
import pytest
import torch

from medtransfer.evaluate.segmentation import per_image_scores, summarize


def numpy_overlap(pred, target, fov, num_classes):
    """Reference Dice and IoU per image and class, counting only pixels inside the field of view."""
    dice = np.zeros((len(pred), num_classes))
    iou = np.zeros((len(pred), num_classes))
    for i in range(len(pred)):
        for c in range(num_classes):
            p, t = (pred[i] == c) & fov[i], (target[i] == c) & fov[i]
            inter, total, union = (p & t).sum(), p.sum() + t.sum(), (p | t).sum()
            dice[i, c] = 2 * inter / total if total else 1.0
            iou[i, c] = inter / union if union else 1.0
    return dice, iou


def test_dice_and_iou_match_a_numpy_reference_inside_the_field_of_view():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 3, (4, 20, 24))
    pred = np.where(rng.random(target.shape) < 0.7, target, rng.integers(0, 3, target.shape))
    fov = rng.random(target.shape) < 0.6
    scores = per_image_scores(torch.from_numpy(pred), torch.from_numpy(target), 3, torch.from_numpy(fov),
                              names=("dice", "iou"))
    dice, iou = numpy_overlap(pred, target, fov, 3)
    assert np.allclose(scores["dice"].numpy(), dice, atol=1e-6)
    assert np.allclose(scores["iou"].numpy(), iou, atol=1e-6)
    # the field of view matters: ignoring it gives different numbers
    everywhere, _ = numpy_overlap(pred, target, np.ones_like(fov), 3)
    assert not np.allclose(everywhere, dice)


def test_errors_outside_the_field_of_view_do_not_count():
    target = torch.zeros(1, 10, 10, dtype=torch.long)
    target[0, 2:5, 2:5] = 1
    fov = torch.zeros(1, 10, 10, dtype=torch.bool)
    fov[0, :6, :6] = True
    pred = target.clone()
    pred[0, 8:, 8:] = 1  # a false positive outside the FOV
    assert per_image_scores(pred, target, 2, fov, ("dice",))["dice"][0, 1] == 1.0
    assert per_image_scores(pred, target, 2, None, ("dice",))["dice"][0, 1] < 1.0


def test_empty_classes_score_one_when_also_not_predicted_and_zero_for_false_positives():
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    pred = torch.zeros(2, 8, 8, dtype=torch.long)
    pred[1, 0, 0] = 1
    scores = per_image_scores(pred, target, 2, names=("dice", "iou"))
    assert scores["dice"][:, 1].tolist() == [1.0, 0.0] and scores["iou"][:, 1].tolist() == [1.0, 0.0]


def test_hd95_of_hand_computed_cases():
    def hd95(pred_pixels, target_pixels, shape=(32, 32)):
        pred, target = torch.zeros(1, *shape, dtype=torch.long), torch.zeros(1, *shape, dtype=torch.long)
        for r, c in pred_pixels:
            pred[0, r, c] = 1
        for r, c in target_pixels:
            target[0, r, c] = 1
        return per_image_scores(pred, target, 2, names=("hd95",))["hd95"][0].tolist()

    # one pixel each, 4 columns apart: every surface distance is 4
    background, value = hd95([(5, 9)], [(5, 5)])
    assert math.isnan(background) and value == pytest.approx(4.0)
    # a 20-pixel line matched exactly plus one stray predicted pixel 20 rows away: the stray pixel is 1 of the 21
    # prediction-to-reference distances (20 zeros, one 20); torch.quantile's linear interpolation at 0.95 * 20 = 19
    # picks the 20th sorted value, a zero, so HD95 ignores the outlier (the plain Hausdorff distance would be 20)
    line = [(10, c) for c in range(20)]
    assert hd95(line + [(30, 0)], line)[1] == pytest.approx(0.0)
    # two stray pixels: 22 distances (20 zeros, two 20s); position 0.95 * 21 = 19.95 interpolates 0 and 20 -> 19
    assert hd95(line + [(30, 0), (30, 1)], line)[1] == pytest.approx(0.95 * 20, abs=1e-4)
    # nothing predicted: no surface to measure, so the worst possible distance, the image diagonal
    assert hd95([], [(5, 5)])[1] == pytest.approx(math.hypot(31, 31))
    # nothing to find and nothing found: undefined (NaN), left out of the mean
    assert math.isnan(hd95([], [])[1])


def test_summary_averages_over_images_per_class_then_over_foreground_classes():
    scores = {"dice": np.array([[0.9, 0.5, np.nan], [0.7, 0.7, 0.4]]),
              "hd95": np.array([[np.nan, 2.0, 6.0], [np.nan, 4.0, np.nan]])}
    overall, per_class = summarize(scores)
    assert per_class["dice"][:2] == pytest.approx([0.8, 0.6]) and per_class["dice"][2] == pytest.approx(0.4)
    assert overall["dice"] == pytest.approx((0.6 + 0.4) / 2)  # the background is not in the overall Dice
    assert math.isnan(per_class["hd95"][0]) and per_class["hd95"][1:] == pytest.approx([3.0, 6.0])
    assert overall["hd95"] == pytest.approx(4.5)
