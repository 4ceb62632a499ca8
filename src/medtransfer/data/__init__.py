"""Datasets: one registry from name to loader, so configs name a dataset and its options and nothing else.

Every loader returns a validated `ImageDataset` (uint8 channel-first images, int64 labels, train/val/test).
File-based loaders decode through the dataset cache (`data.decode`, `data.cache`); MedMNIST and the synthetic sets
are arrays already (a .npz read or a seeded generation) and are not cached on disk. Within a process,
`load_dataset` returns one object per distinct name and options, so the grid's checks, inline pre-trainings and
fine-tunings share one dataset instead of loading it again.
"""

from __future__ import annotations

import functools
import inspect
import json
from typing import Callable

from medtransfer.data.base import TASKS, ImageDataset, Split
from medtransfer.data.chest_xray import chestxray14, chexpert
from medtransfer.data.csv_dataset import csv_dataset
from medtransfer.data.folders import drive, segmentation_folder
from medtransfer.data.fractions import label_fraction_indices
from medtransfer.data.medmnist import MEDMNIST_NAMES, load_medmnist
from medtransfer.data.synthetic import synthetic2d, synthetic3d
from medtransfer.data.synthetic_seg import synthetic_seg2d, synthetic_seg3d
from medtransfer.data.unlabelled import image_folder, volume_folder
from medtransfer.errors import DataError, allowed
from medtransfer.seeds import check_seed

DATASETS: dict[str, Callable[..., ImageDataset]] = {
    "synthetic2d": synthetic2d,
    "synthetic3d": synthetic3d,
    "synthetic_seg2d": synthetic_seg2d,
    "synthetic_seg3d": synthetic_seg3d,
    **{n: functools.partial(load_medmnist, n) for n in MEDMNIST_NAMES},
    "drive": drive,
    "segmentation_folder": segmentation_folder,
    "csv": csv_dataset,
    "chestxray14": chestxray14,
    "chexpert": chexpert,
    "image_folder": image_folder,
    "volume_folder": volume_folder,
}


_LOADED: dict[str, ImageDataset] = {}
LOADING_ONLY_OPTIONS = ("workers",)  # change how a dataset is loaded, never what: kept out of run identities


def identity_options(options: dict) -> dict:
    """Dataset options that determine the data, for run and pre-training hashes (adding `workers` re-runs nothing)."""
    return {k: v for k, v in options.items() if k not in LOADING_ONLY_OPTIONS}



def load_dataset(name: str, /, **options) -> ImageDataset:
    """Load a registered dataset, rejecting unknown names and options with the allowed ones listed; a second call
    with the same name and options in this process returns the same object (see `forget_loaded_datasets`)."""
    if name not in DATASETS:
        raise DataError(f"dataset {name!r} is unknown; allowed: {allowed(DATASETS)}")
    loader = DATASETS[name]
    accepted = inspect.signature(loader).parameters
    for key in options:
        if key not in accepted:
            raise DataError(f"dataset {name}: option {key!r} is unknown; allowed: {allowed(accepted)}")
    if "seed" in options:  # every loader's split/sampling seed; numpy would fail with a traceback mid-load
        check_seed(options["seed"], f"dataset {name}")
    memo = json.dumps([name, options], sort_keys=True, default=repr)
    if memo not in _LOADED:
        _LOADED[memo] = loader(**options).validate()
    return _LOADED[memo]


def forget_loaded_datasets() -> None:
    """Drop this process's loaded datasets (for a long-lived process, or a test that rewrites files in place)."""
    _LOADED.clear()


__all__ = ["DATASETS", "TASKS", "ImageDataset", "Split", "forget_loaded_datasets", "identity_options",
           "label_fraction_indices", "load_dataset"]
