"""Segmentation datasets from folders: images and masks paired by a name pattern, optional field-of-view masks.

Patterns are paths under ``root`` with one ``{id}`` placeholder (``*`` and ``?`` also allowed), e.g. images
``training/images/{id}_training.tif`` and masks ``training/1st_manual/{id}_manual1.gif``: every image found defines
an id, and its mask (and FOV) must exist under the same id, so a missing mask is reported instead of silently
dropping the image. 2D images and volumes (NIfTI/NRRD/MHA/DICOM) both work; volumes are oriented and resampled
identically for image and mask (nearest neighbours for the mask).

`drive` is the DRIVE retinal-vessel preset (Staal et al. 2004): official split, native 584x565 RGB images, vessel
masks from ``1st_manual`` and FOV masks from ``mask``; 4 of the 20 training images are held out as a seeded
validation split, because DRIVE publishes no validation split and model selection must not look at the test images.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from medtransfer.data.base import SPLITS, ImageDataset, Split
from medtransfer.data.io import (UnreadableFile, check_aspect, check_size_option, is_volume_path, prepare_image,
                                 prepare_mask, read_any, window_range)
from medtransfer.data.decode import decode
from medtransfer.data.splits import check_part, group_split
from medtransfer.errors import DataError


@dataclass(frozen=True)
class SegmentationItem:
    key: str
    path: Path
    mask: Path
    fov: Path | None
    split: str


def find_by_pattern(root: Path, pattern: str, where: str) -> dict[str, Path]:
    """Files under ``root`` matching ``pattern`` (one ``{id}``), keyed by the text that stands for ``{id}``."""
    if pattern.count("{id}") != 1:
        raise DataError(f"{where}: pattern {pattern!r} must contain {{id}} exactly once; e.g. 'images/{{id}}.png'")
    regex = re.escape(pattern).replace(r"\{id\}", "(?P<id>[^/]+)").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
    compiled = re.compile(regex + "$")
    found = {}
    for path in sorted(root.glob(pattern.replace("{id}", "*"))):
        match = compiled.match(path.relative_to(root).as_posix())
        if match:
            found[match["id"]] = path
    return found


def mask_to_classes(mask: np.ndarray, path: Path, num_classes: int, mask_values: tuple[int, ...] | None) -> np.ndarray:
    """Stored mask values -> class indices: explicit ``mask_values`` (value i means class i), or for two classes
    any non-zero value as foreground (masks saved as 0/255), or the values themselves as indices."""
    if mask_values is not None:
        out = np.full(mask.shape, -1, np.int64)
        for index, value in enumerate(mask_values):
            out[mask == value] = index
        if (out < 0).any():
            raise UnreadableFile(path, f"mask holds value {mask[out < 0].flat[0]}; allowed: {list(mask_values)} "
                                       "(`mask_values`)")
        return out
    if num_classes == 2:
        return (mask != 0).astype(np.int64)
    if mask.min() < 0 or mask.max() >= num_classes:
        raise UnreadableFile(path, f"mask holds value {int(mask.max())}; allowed: 0..{num_classes - 1} "
                                   "(or give `mask_values`)")
    return mask


def read_pair(item: SegmentationItem, orientation, spacing, size, aspect, window, channels, npz_key,
              num_classes: int, mask_values, fov_threshold: float | None) -> dict[str, np.ndarray]:
    """Image, class-index mask and (read or thresholded) FOV of one item, on one grid (module level: runs in
    worker processes)."""
    image = read_any(item.path, orientation, spacing, npz_key=npz_key)
    mask = read_any(item.mask, orientation, spacing, mask=True, npz_key=npz_key)
    arrays = {"image": prepare_image(image, item.path, size, aspect, window, channels)}
    if mask.array.shape[1:] != image.array.shape[1:]:
        raise UnreadableFile(item.mask, f"mask shape {mask.array.shape[1:]} differs from its image's "
                                        f"{image.array.shape[1:]} ({item.path.name})")
    arrays["mask"] = mask_to_classes(prepare_mask(mask, item.mask, size, aspect), item.mask, num_classes, mask_values)
    if fov_threshold is not None:
        arrays["fov"] = arrays["image"].max(axis=0) > fov_threshold
    elif item.fov is not None:
        view = read_any(item.fov, orientation, spacing, mask=True, npz_key=npz_key)
        if view.array.shape[1:] != image.array.shape[1:]:
            raise UnreadableFile(item.fov, f"FOV mask shape {view.array.shape[1:]} differs from its image's "
                                           f"{image.array.shape[1:]} ({item.path.name})")
        arrays["fov"] = prepare_mask(view, item.fov, size, aspect) != 0
    return arrays


def segmentation_folder(
    root: str, images: str = "images/{id}.png", masks: str = "masks/{id}.png", fov: str | Mapping | None = None,
    test_images: str | None = None, test_masks: str | None = None, test_fov: str | None = None,
    test_ids: str | Sequence[str] | None = None, val_ids: str | Sequence[str] | None = None,
    class_names: Sequence[str] = ("background", "foreground"), mask_values: Sequence[int] | None = None,
    val_fraction: float | int = 0.1, test_fraction: float | int = 0.2, seed: int = 0,
    size: int | Sequence[int] | None = None, aspect: str = "pad", channels: int | None = None,
    window: str | Sequence[float] | None = None, orientation: str | None = "RAS",
    spacing: Sequence[float] | None = None, npz_key: str | None = None, on_error: str = "raise",
    name: str = "segmentation_folder", workers: int | None = None,
) -> ImageDataset:
    """Images + masks (+ FOV) found by pattern under ``root``; test from ``test_*`` patterns, ``test_ids`` or a
    seeded carve-out.

    The test split is the ``test_images`` files, or the ids listed in ``test_ids`` (a list, or a text file under
    ``root`` with one id per line), or ``test_fraction`` then ``val_fraction`` of the images (fractions or counts)
    held out at random (seeded); ``val_ids`` likewise fixes val. ``fov``: a pattern of field-of-view masks, or
    ``{threshold: T}`` to count only pixels brighter than T (0..255, any channel) — e.g. a fundus photograph's black
    border — in loss and metrics. ``size`` resizes every image (masks and FOVs with nearest neighbours; ``aspect``:
    pad keeps proportions, stretch does not); None keeps native sizes. ``workers`` processes decode the files.
    """
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise DataError(f"{name}: root {root_path} is not a folder; allowed: the folder holding the images")
    if class_names[0] != "background" or len(class_names) < 2:
        raise DataError(f"{name}: class_names={list(class_names)}; allowed: 'background' first, then >= 1 class")
    if mask_values is not None and len(mask_values) != len(class_names):
        raise DataError(f"{name}: mask_values={list(mask_values)} has {len(mask_values)} values for "
                        f"{len(class_names)} class_names; allowed: one stored value per class")
    check_part(val_fraction, "val_fraction", name)
    check_part(test_fraction, "test_fraction", name)
    check_aspect(aspect, name)
    window = window_range(window)
    fov_pattern, fov_threshold = _fov_rule(fov, name)
    if test_images is not None and test_ids is not None:
        raise DataError(f"{name}: test_images and test_ids both set; allowed: one way to name the test split")

    items = _pair(root_path, images, masks, fov_pattern, "train", name)
    if test_images is not None:
        if test_masks is None:
            raise DataError(f"{name}: test_images is set but test_masks is not; allowed: both, or neither")
        items += _pair(root_path, test_images, test_masks, test_fov, "test", name)
    fixed = {split: _ids(value, key, root_path, name) for split, key, value in
             (("test", "test_ids", test_ids), ("val", "val_ids", val_ids)) if value is not None}
    items = _assign_ids(items, fixed, name)
    parts = {s: f for s, f in (("test", test_fraction), ("val", val_fraction))
             if s not in fixed and not (s == "test" and test_images is not None)}
    train_rows = [i for i, item in enumerate(items) if item.split == "train"]
    assignment = group_split(np.array([items[i].path.name for i in train_rows]), parts, seed, name)
    for row, split in zip(train_rows, assignment):
        items[row] = replace(items[row], split=split)

    spatial_dims = 3 if is_volume_path(items[0].path) else 2
    read = functools.partial(
        read_pair, orientation=orientation, spacing=tuple(spacing) if spacing else None,
        size=check_size_option(size, spatial_dims, name), aspect=aspect, window=window, channels=channels,
        npz_key=npz_key, num_classes=len(class_names),
        mask_values=tuple(mask_values) if mask_values is not None else None, fov_threshold=fov_threshold)
    decoded = decode(items, read, [i.split for i in items], [[i.path, i.mask] + ([i.fov] if i.fov else [])
                                                             for i in items], on_error, name, workers)
    splits = {s: Split(images=a["image"], labels=a["mask"], fov=a.get("fov")) for s, a in decoded.arrays.items()}
    counts = ", ".join(f"{s} {len(splits[s])}" for s in SPLITS)
    return ImageDataset(
        name=name, task="segmentation", class_names=tuple(class_names), spatial_dims=spatial_dims,
        description=f"Segmentation folder {root_path} ({counts}; images {images}, masks {masks}"
                    f"{', FOV ' + str(fov) if fov else ''}).{decoded.summary()}",
        **splits,
    ).validate()


def _fov_rule(fov, where: str) -> tuple[str | None, float | None]:
    """``fov``: None, a pattern (masks on disk) or {threshold: T} (computed from the image) -> (pattern, T)."""
    if fov is None or isinstance(fov, str):
        return fov, None
    threshold = fov.get("threshold") if isinstance(fov, Mapping) and set(fov) == {"threshold"} else None
    if isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and 0 <= threshold < 255:
        return None, float(threshold)
    raise DataError(f"{where}: fov={fov!r}; allowed: a pattern such as 'mask/{{id}}.gif', or {{threshold: T}} with "
                    "0 <= T < 255 to keep pixels brighter than T")


def _ids(value, key: str, root: Path, where: str) -> set[str]:
    """Ids from a list, or from a text file (relative to ``root``) with one id per line."""
    if isinstance(value, str):
        path = Path(value) if Path(value).is_absolute() else root / value
        if not path.is_file():
            raise DataError(f"{where}: {key}={value!r}: {path} is not a file; allowed: a list of ids or a text file "
                            "with one id per line")
        return {line.strip() for line in path.read_text().splitlines() if line.strip()}
    if isinstance(value, Sequence) and all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
        return {str(v) for v in value}
    raise DataError(f"{where}: {key}={value!r}; allowed: a list of ids or a text file with one id per line")


def _assign_ids(items: list[SegmentationItem], fixed: dict[str, set[str]], where: str) -> list[SegmentationItem]:
    """Put the items whose ids are listed into their split; an id listed twice or matching no image is refused."""
    if "test" in fixed and "val" in fixed and fixed["test"] & fixed["val"]:
        raise DataError(f"{where}: id(s) {sorted(fixed['test'] & fixed['val'])[:5]} are in both test_ids and "
                        "val_ids; allowed: each id in one split")
    known = {item.key for item in items if item.split == "train"}
    for split, ids in fixed.items():
        unknown = sorted(ids - known)
        if unknown:
            raise DataError(f"{where}: {split}_ids name(s) {unknown[:5]} match no image; allowed: ids of the "
                            f"images found, e.g. {sorted(known)[:3]}")
    chosen = {key: split for split, ids in fixed.items() for key in ids}
    return [replace(item, split=chosen[item.key]) if item.split == "train" and item.key in chosen else item
            for item in items]


def _pair(root: Path, images: str, masks: str, fov: str | None, split: str, where: str) -> list[SegmentationItem]:
    """Every image found by ``images``; its mask/FOV path is formed from its id (a missing one is reported later)."""
    found = find_by_pattern(root, images, where)
    if not found:
        raise DataError(f"{where}: no file under {root} matches {images!r}; allowed: a pattern such as "
                        "'images/{id}.png' that matches the image files")
    for pattern in (masks, fov):
        if pattern is not None and pattern.count("{id}") != 1:
            raise DataError(f"{where}: pattern {pattern!r} must contain {{id}} exactly once")
    return [SegmentationItem(key, path, _resolve(root, masks, key), _resolve(root, fov, key) if fov else None, split)
            for key, path in found.items()]


def _resolve(root: Path, pattern: str, key: str) -> Path:
    """The one file matching ``pattern`` for this id (a glob when the pattern has wildcards), else the literal path
    so the scan reports it as missing."""
    candidate = pattern.replace("{id}", key)
    if any(c in candidate for c in "*?"):
        matches = sorted(root.glob(candidate))
        return matches[0] if len(matches) == 1 else root / candidate
    return root / candidate


def drive(root: str, val_count: int = 4, seed: int = 0, size: int | Sequence[int] | None = None,
          on_error: str = "raise", workers: int | None = None) -> ImageDataset:
    """DRIVE (Staal et al. 2004) at native 584x565 px: 20 training images (``val_count`` held out, seeded) and
    the 20 official test images; masks = ``1st_manual`` (vessel = class 1), FOV = ``mask``, as the benchmark scores
    Dice inside the FOV against the first observer. The test folder may be named ``test`` (official archive) or
    ``testing``."""
    root_path = Path(root).expanduser()
    test = "test" if (root_path / "test").is_dir() and not (root_path / "testing").is_dir() else "testing"
    return segmentation_folder(
        root, images="training/images/{id}_training.tif", masks="training/1st_manual/{id}_manual1.gif",
        fov="training/mask/{id}_training_mask.gif", test_images=f"{test}/images/{{id}}_test.tif",
        test_masks=f"{test}/1st_manual/{{id}}_manual1.gif", test_fov=f"{test}/mask/{{id}}_test_mask.gif",
        class_names=("background", "vessel"), val_fraction=val_count, seed=seed, size=size, on_error=on_error,
        name="drive", workers=workers,
    )
