"""Unlabelled image and volume folders as pre-training data for any SSL method.

Every file under ``root`` matching ``pattern`` goes into the train split (task ``unlabelled``, labels all 0, empty
val and test): pre-training reads only training images, and holding out unlabelled images would waste them. Files
are read, checked and resized exactly as in the labelled loaders, so a corrupt file is reported before training.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Sequence

import numpy as np

from medtransfer.data.base import ImageDataset, Split
from medtransfer.data.cache import Entry
from medtransfer.data.decode import decode
from medtransfer.data.fast2d import image_arrays
from medtransfer.data.io import (DICOM_SUFFIXES, IMAGE_SUFFIXES, VOLUME_SUFFIXES, check_aspect, check_size_option,
                                 suffix, window_range)
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


def _unlabelled(name: str, spatial_dims: int, decoded: Entry, root: str, what: str) -> ImageDataset:
    train, val, test = (decoded.arrays[s]["image"] for s in ("train", "val", "test"))
    return ImageDataset(
        name=name, task="unlabelled", class_names=("image",), spatial_dims=spatial_dims,
        train=Split(images=train, labels=np.zeros(len(train), np.int64)),
        val=Split(images=val, labels=np.zeros(0, np.int64)), test=Split(images=test, labels=np.zeros(0, np.int64)),
        description=f"Unlabelled {what} from {root} ({len(train)} files; no labels, no val/test).{decoded.summary()}",
    ).validate()


def image_folder(root: str, pattern: str = "**/*", size: int | Sequence[int] = 224, aspect: str = "pad",
                 channels: int | None = 1, window: str | Sequence[float] | None = None,
                 on_error: str = "raise", workers: int | None = None) -> ImageDataset:
    """2D images (PNG/JPEG/TIFF/GIF/BMP/single-frame DICOM) under ``root``, resized to ``size``, grey by default;
    ``workers`` processes decode them (default: every core)."""
    files = _files(root, pattern, IMAGE_SUFFIXES + DICOM_SUFFIXES, "image_folder")
    read = functools.partial(image_arrays, orientation=None, spacing=None,
                             size=check_size_option(size, 2, "image_folder"),
                             aspect=check_aspect(aspect, "image_folder"), window=window_range(window),
                             channels=channels)
    decoded = decode(files, read, ["train"] * len(files), [[f] for f in files], on_error, "image_folder", workers)
    return _unlabelled("image_folder", 2, decoded, root, "2D images")


def volume_folder(root: str, pattern: str = "**/*", size: int | Sequence[int] = 64, aspect: str = "pad",
                  window: str | Sequence[float] | None = None, orientation: str | None = "RAS",
                  spacing: Sequence[float] | None = None, dicom_series: bool = False, npz_key: str | None = None,
                  on_error: str = "raise", workers: int | None = None) -> ImageDataset:
    """Volumes (NIfTI/NRRD/MHA/multi-frame DICOM/``.npy``/``.npz``) under ``root``; with ``dicom_series`` every
    matching *folder* is read as one DICOM series instead. Oriented, resampled to ``spacing`` (mm) if given, then
    resized; ``npz_key`` names the array of ``.npz`` files holding several."""
    if dicom_series:
        files = _files(root, pattern, (), "volume_folder", folders=True)
        files = [f for f in files if any(c.is_file() for c in f.iterdir())]  # series folders, not their parents
    else:
        files = _files(root, pattern, VOLUME_SUFFIXES + DICOM_SUFFIXES, "volume_folder")
    read = functools.partial(image_arrays, orientation=orientation, spacing=tuple(spacing) if spacing else None,
                             size=check_size_option(size, 3, "volume_folder"),
                             aspect=check_aspect(aspect, "volume_folder"), window=window_range(window), channels=1,
                             npz_key=npz_key, volume=True)
    decoded = decode(files, read, ["train"] * len(files), [[f] for f in files], on_error, "volume_folder", workers)
    return _unlabelled("volume_folder", 3, decoded, root, "volumes")
