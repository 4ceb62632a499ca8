"""Label fractions: which training examples keep their labels when only a fraction of them is labelled.

Subsets are stratified (class proportions of the full set, at least one example per class, so every class can be
learnt and scored) and nested (for one seed, the 1 % subset lies inside the 10 % one), so a curve over fractions
measures the value of more labels rather than the luck of a different draw. Segmentation labels whole images (every
pixel of an image is labelled or none is), so its subsets are seeded, nested random sets of images, at least one.
"""

from __future__ import annotations

import math
from numbers import Real

import numpy as np

from medtransfer.data.base import TASKS
from medtransfer.errors import DataError, allowed


def label_fraction_indices(labels: np.ndarray, task: str, fraction: float, seed: int) -> np.ndarray:
    """Sorted int64 indices into the training set of a stratified, seeded, nested subset of size ~fraction."""
    if isinstance(fraction, bool) or not isinstance(fraction, Real) or not 0 < fraction <= 1:
        raise DataError(f"label fraction={fraction!r} is out of range; allowed: 0 < fraction <= 1")
    rng = np.random.default_rng(seed)
    if task == "segmentation":
        n = len(_checked_masks(labels))
        return np.sort(rng.permutation(n)[: _count(fraction, n)]).astype(np.int64)
    labels = _checked(labels, task)
    if task == "multilabel":
        return _multilabel(labels, fraction, rng)
    kept = [order[: _count(fraction, len(order))] for order in _class_orders(labels, rng)]
    return np.sort(np.concatenate(kept)).astype(np.int64)


def class_orders(labels: np.ndarray, task: str, seed: int) -> list[np.ndarray]:
    """Per class of a single-label task, its training indices in the seeded order label fractions keep prefixes of;
    ``data.imbalance`` keeps shorter prefixes of the same orders, so its subsets nest inside the fractions'."""
    return _class_orders(_checked(labels, task), np.random.default_rng(seed))


def _class_orders(labels: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    # The permutation depends only on the seed and the labels, never on the fraction: each class keeps a prefix of
    # its own order, and a larger fraction keeps a longer prefix, hence the nesting.
    return [rng.permutation(np.flatnonzero(labels == c)) for c in range(labels.max() + 1)]


def describe_subset(labels: np.ndarray, task: str, idx: np.ndarray) -> dict:
    """Size of the subset and examples (positives for multilabel; pixels/voxels for segmentation) per class."""
    idx = np.asarray(idx, dtype=np.int64)
    if task == "segmentation":
        return {"n": int(len(idx)), "per_class": [int(c) for c in np.bincount(_checked_masks(labels)[idx].ravel())]}
    labels = _checked(labels, task)
    if task == "multilabel":
        per_class = labels[idx].sum(axis=0)
    else:
        per_class = np.bincount(labels[idx], minlength=labels.max() + 1)
    return {"n": int(len(idx)), "per_class": [int(c) for c in per_class]}


def _count(fraction: float, n: int) -> int:
    """Round half up (monotone in the fraction, so nesting holds), never below one."""
    return max(1, math.floor(fraction * n + 0.5))


def _multilabel(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    order = rng.permutation(len(labels))
    prefix = _count(fraction, len(labels))
    kept = set(order[:prefix].tolist())
    # A label with no positive in the prefix gains its earliest positive in `order`. This stays nested: take
    # fractions a < b, so prefix(a) is inside prefix(b). An index kept at a is either in prefix(a), hence in
    # prefix(b), or it is the earliest positive e of a label l. If prefix(b) holds any positive of l, that
    # prefix, which starts at the beginning of `order`, already contains the earliest one, e; if it holds none,
    # b adds e itself. Either way e is kept at b.
    for label in range(labels.shape[1]):
        if not labels[order[:prefix], label].any():
            kept.add(int(order[labels[order, label] == 1][0]))
    return np.array(sorted(kept), dtype=np.int64)


def _checked_masks(masks: np.ndarray) -> np.ndarray:
    masks = np.asarray(masks)
    if masks.ndim < 3 or len(masks) == 0 or not np.issubdtype(masks.dtype, np.integer):
        raise DataError(f"segmentation masks have shape {masks.shape} and dtype {masks.dtype}; allowed: non-empty "
                        "integer (N, *spatial) class-index masks")
    return masks


def _checked(labels: np.ndarray, task: str) -> np.ndarray:
    """Labels in `Split` layout with every class present; a missing class would silently drop out of training."""
    if task not in TASKS:
        raise DataError(f"task={task!r} is unknown; allowed: {allowed(TASKS)}")
    labels = np.asarray(labels)
    want_ndim = 2 if task == "multilabel" else 1
    if labels.ndim != want_ndim or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"labels have shape {labels.shape} and dtype {labels.dtype}; allowed: non-empty int64 "
            f"{'(N, L)' if want_ndim == 2 else '(N,)'} for task {task}"
        )
    if labels.min() < 0 or (task == "multilabel" and labels.max() > 1):
        raise DataError(
            f"labels contain {labels.min()}..{labels.max()}; allowed: class indices >= 0 (0/1 for multilabel)"
        )
    counts = labels.sum(axis=0) if task == "multilabel" else np.bincount(labels)
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        raise DataError(f"class {int(empty[0])} has no training example; allowed: at least one example of every class")
    return labels
