"""Train/val/test assignment that keeps every patient in one split, and a leak check for splits users bring.

A patient's images share anatomy, scanner and often the label; one patient on both sides of a split lets a model
score on memory. Random splits therefore draw *patients* (scikit-learn's GroupShuffleSplit, seeded), and a
user-given split column is accepted only if no patient crosses it. Without patient ids every image is its own group.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupShuffleSplit

from medtransfer.data.base import SPLITS
from medtransfer.errors import DataError

SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "test": "test", "testing": "test"}


def check_part(value, key: str, where: str) -> float | int:
    """A held-out size: a fraction in [0, 1) of the patients, or a whole number of patients."""
    ok_fraction = isinstance(value, Real) and not isinstance(value, (bool, Integral)) and 0 <= value < 1
    ok_count = isinstance(value, Integral) and not isinstance(value, bool) and value >= 0
    if not (ok_fraction or ok_count):
        raise DataError(f"{where}: {key}={value!r}; allowed: a fraction in [0, 1) or a whole number of patients >= 0")
    return value


def group_split(groups: np.ndarray, parts: dict[str, float | int], seed: int, where: str) -> np.ndarray:
    """Assign each row to "train" or one of ``parts`` (e.g. {"test": 0.2, "val": 0.1}), whole groups at a time.

    Parts are carved in the order given, each as a fraction of *all* groups (or a count of groups), so adding a
    test part leaves the val fraction meaning the same share of patients.
    """
    groups = np.asarray(groups).astype(str)
    assignment = np.full(len(groups), "train", dtype=object)
    total = len(np.unique(groups))
    for offset, (name, part) in enumerate(parts.items()):
        wanted = round(part * total) if isinstance(part, float) else int(part)
        if wanted == 0:
            continue
        free = np.flatnonzero(assignment == "train")
        available = len(np.unique(groups[free]))
        if wanted >= available:
            raise DataError(f"{where}: {name} needs {wanted} of the {available} remaining patients/images, leaving "
                            "none for training; allowed: a smaller fraction or more data")
        splitter = GroupShuffleSplit(n_splits=1, test_size=wanted, random_state=seed + offset)
        _, held = next(splitter.split(free, groups=groups[free]))
        assignment[free[held]] = name
    return assignment


def normalise_split_names(values, where: str) -> np.ndarray:
    """Map a user's split column (train/training, val/valid/validation, test/testing; any case) to SPLITS."""
    out = np.empty(len(values), dtype=object)
    for row, value in enumerate(values):
        key = str(value).strip().lower()
        if key not in SPLIT_NAMES:
            raise DataError(f"{where}: row {row + 1} has split {value!r}; allowed: {', '.join(SPLIT_NAMES)}")
        out[row] = SPLIT_NAMES[key]
    return out


def check_split_leak(patients: np.ndarray, assignment: np.ndarray, where: str) -> None:
    """Refuse a split in which a patient id appears in more than one of train/val/test, naming the patients."""
    pairs = pd.DataFrame({"patient": np.asarray(patients).astype(str), "split": np.asarray(assignment).astype(str)})
    used = pairs.drop_duplicates().groupby("patient")["split"].agg(lambda s: sorted(s, key=SPLITS.index))
    leaked = [f"{patient} ({'+'.join(splits)})" for patient, splits in used.items() if len(splits) > 1]
    if leaked:
        more = f" and {len(leaked) - 10} more" if len(leaked) > 10 else ""
        raise DataError(f"{where}: patient(s) {', '.join(leaked[:10])}{more} appear in more than one split; "
                        "allowed: each patient in one split only (fix the split column, or drop it to split "
                        "by patient)")
