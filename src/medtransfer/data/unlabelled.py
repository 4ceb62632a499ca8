"""Unlabelled image and volume folders as pre-training data for any SSL method.

Every file under ``root`` matching ``pattern`` goes into the train split (task ``unlabelled``, labels all 0, empty
val and test): pre-training reads only training images, and holding out unlabelled images would waste them. Files
are read, checked and resized exactly as in the labelled loaders, so a corrupt file is reported before training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from medtransfer.data.base import ImageDataset, Split
from medtransfer.data.io import (DICOM_SUFFIXES, IMAGE_SUFFIXES, VOLUME_SUFFIXES, check_aspect, check_size_option,
                                 prepare_image, read_image, read_volume, suffix, window_range)
from medtransfer.data.scan import scan, stack
from medtransfer.errors import DataError


def _files(root: str, pattern: str, suffixes: Sequence[str], where: str, folders: bool = False) -> list[Path]:
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise DataError(f"{where}: root {root_path} is not a folder; allowed: the folder holding the images")
    found = sorted(p for p in root_path.glob(pattern)
                   if (p.is_file() and suffix(p) in suffixes) or (folders and p.is_dir()))
    if not found:
        raise DataError(f"{where}: no file under {root_path} matches {pattern!r} with suffix {', '.join(suffixes)}")
    return found


def _unlabelled(name: str, spatial_dims: int, arrays: list, result, root: str, what: str) -> ImageDataset:
    images = stack(arrays, "image", name, arrays[0])
    empty = Split(images=images[:0], labels=np.zeros(0, np.int64))
    return ImageDataset(
        name=name, task="unlabelled", class_names=("image",), spatial_dims=spatial_dims,
        train=Split(images=images, labels=np.zeros(len(images), np.int64)), val=empty, test=empty,
        description=f"Unlabelled {what} from {root} ({len(images)} files; no labels, no val/test).{result.summary()}",
    ).validate()


def image_folder(root: str, pattern: str = "**/*", size: int | Sequence[int] = 224, aspect: str = "pad",
                 channels: int | None = 1, window: str | Sequence[float] | None = None,
                 on_error: str = "raise") -> ImageDataset:
    """2D images (PNG/JPEG/TIFF/GIF/BMP/single-frame DICOM) under ``root``, resized to ``size``, grey by default."""
    files = _files(root, pattern, IMAGE_SUFFIXES + DICOM_SUFFIXES, "image_folder")
    target = check_size_option(size, 2, "image_folder")
    check_aspect(aspect, "image_folder")
    limits = window_range(window)

    def read(path: Path) -> dict[str, np.ndarray]:
        return {"image": prepare_image(read_image(path), path, target, aspect, limits, channels)}

    result = scan(files, read, on_error, "image_folder")
    return _unlabelled("image_folder", 2, result.arrays, result, root, "2D images")


def volume_folder(root: str, pattern: str = "**/*", size: int | Sequence[int] = 64, aspect: str = "pad",
                  window: str | Sequence[float] | None = None, orientation: str | None = "RAS",
                  spacing: Sequence[float] | None = None, dicom_series: bool = False,
                  on_error: str = "raise") -> ImageDataset:
    """Volumes (NIfTI/NRRD/MHA/multi-frame DICOM) under ``root``; with ``dicom_series`` every matching *folder*
    is read as one DICOM series instead. Oriented, resampled to ``spacing`` (mm) if given, then resized."""
    if dicom_series:
        files = _files(root, pattern, (), "volume_folder", folders=True)
        files = [f for f in files if any(c.is_file() for c in f.iterdir())]  # series folders, not their parents
    else:
        files = _files(root, pattern, VOLUME_SUFFIXES + DICOM_SUFFIXES, "volume_folder")
    target = check_size_option(size, 3, "volume_folder")
    check_aspect(aspect, "volume_folder")
    limits = window_range(window)

    def read(path: Path) -> dict[str, np.ndarray]:
        loaded = read_volume(path, orientation, spacing)
        return {"image": prepare_image(loaded, path, target, aspect, limits, 1)}

    result = scan(files, read, on_error, "volume_folder")
    return _unlabelled("volume_folder", 3, result.arrays, result, root, "volumes")
