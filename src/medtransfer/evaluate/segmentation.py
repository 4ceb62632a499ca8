"""Segmentation metrics per image and class (MONAI's Dice, IoU and 95th-percentile Hausdorff distance).

Scores are computed per image and averaged over images (MONAI's convention), so one large image does not outweigh
the others. Inside a field-of-view mask (e.g. DRIVE's), pixels outside count for nothing: both the prediction and
the reference are blanked there before scoring, for every class.

Undefined values are handled explicitly rather than left to chance:

- Dice/IoU of a class absent from both reference and prediction is 1 (nothing to find, nothing found); absent from
  the reference but predicted is 0 — false positives on an empty image are penalised (MONAI ``ignore_empty=False``).
- HD95 where the class is absent from both is NaN and left out of the mean; where exactly one side is empty there is
  no surface to measure, and the image diagonal (the largest possible distance) is used, so a model that predicts
  nothing cannot look good. HD95 is in pixels/voxels (unit spacing), lower is better; the background has none.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

SegmentationMetricFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def dice(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, C) Dice of one-hot ``pred`` against one-hot ``target``, background included."""
    from monai.metrics import compute_dice  # MONAI takes seconds to import; tables and reports never need it
    return compute_dice(pred, target, include_background=True, ignore_empty=False)


def iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, C) intersection over union (Jaccard), background included."""
    from monai.metrics import compute_iou
    return compute_iou(pred, target, include_background=True, ignore_empty=False)


def hd95(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, C) symmetric 95th-percentile Hausdorff distance; background column NaN (see the module docstring)."""
    from monai.metrics import compute_hausdorff_distance
    with warnings.catch_warnings():  # MONAI warns about every empty mask; empty cases are resolved below
        warnings.simplefilter("ignore")
        values = compute_hausdorff_distance(pred, target, include_background=False, percentile=95).float()
    pred_any = pred[:, 1:].flatten(2).any(-1)
    target_any = target[:, 1:].flatten(2).any(-1)
    diagonal = math.sqrt(sum((s - 1) ** 2 for s in pred.shape[2:]))
    values = torch.where(pred_any & target_any, values, torch.full_like(values, diagonal))
    values = torch.where(pred_any | target_any, values, torch.full_like(values, math.nan))
    return torch.cat([torch.full_like(values[:, :1], math.nan), values], dim=1)


SEGMENTATION_METRICS: dict[str, SegmentationMetricFn] = {
    "dice": dice,  # mean Dice over foreground classes (per class: mean over images)
    "iou": iou,  # mean IoU (Jaccard) over foreground classes
    "hd95": hd95,  # mean 95th-percentile Hausdorff distance over foreground classes, pixels; lower is better
}


def one_hot(labels: torch.Tensor, num_classes: int, fov: torch.Tensor | None = None) -> torch.Tensor:
    """(B, *S) class indices -> (B, C, *S) one-hot; all-zero outside ``fov`` so those pixels count for no class."""
    hot = F.one_hot(labels.long(), num_classes).movedim(-1, 1)
    if fov is not None:
        hot = hot * fov.unsqueeze(1).to(hot.dtype)
    return hot


@torch.no_grad()
def per_image_scores(pred: torch.Tensor, target: torch.Tensor, num_classes: int, fov: torch.Tensor | None = None,
                     names=tuple(SEGMENTATION_METRICS)) -> dict[str, torch.Tensor]:
    """Each named metric as a (B, C) tensor for class-index maps ``pred`` and ``target`` of shape (B, *S)."""
    p, t = one_hot(pred, num_classes, fov), one_hot(target, num_classes, fov)
    return {name: SEGMENTATION_METRICS[name](p, t).float() for name in names}


def summarize(scores: dict[str, np.ndarray]) -> tuple[dict[str, float], dict[str, list[float]]]:
    """(N, C) per-image scores -> overall means over foreground classes and per-class means over images.

    Per-class lists are aligned with ``class_names`` (background first; NaN where a class has no defined value).
    """
    overall, per_class = {}, {}
    for name, values in scores.items():
        values = np.asarray(values, dtype=np.float64)
        defined = ~np.isnan(values)
        counts = defined.sum(0)
        means = np.divide(np.where(defined, values, 0).sum(0), counts, out=np.full(values.shape[1], np.nan),
                          where=counts > 0)
        per_class[name] = means.tolist()
        foreground = means[1:][~np.isnan(means[1:])]
        overall[name] = float(foreground.mean()) if foreground.size else math.nan
    return overall, per_class
