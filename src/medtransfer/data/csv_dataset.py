"""Classification datasets from a CSV over an image folder: one row per image, a path, labels, optionally a patient
id and a split.

Labels come in three layouts: one column of class names or indices (binary / multiclass / ordinal), several 0/1
columns (multilabel), or one column of separated names such as ChestX-ray14's ``Effusion|Mass`` (multilabel with
``label_separator``). Multilabel columns may hold CheXpert's uncertain value -1, which follows an ``uncertain``
policy (Irvin et al. 2019; Pham et al. 2021). A blank cell is refused unless ``blank_labels="negative"`` says it
means "not mentioned" = 0, CheXpert's convention (its preset sets it): elsewhere a blank is more often a lost
value than a negative finding, and reading it as 0 would train on it silently.

- ``ones`` / ``zeros`` (U-Ones / U-Zeros): -1 becomes 1 / 0.
- ``ignore`` (U-Ignore): -1 becomes 0 in ``labels`` and False in ``label_mask``, so a loss can skip those entries.
- ``smoothed_ones`` / ``smoothed_zeros`` (label-smoothing regularisation): ``labels`` as for ones / zeros, and
  ``soft_labels`` draw -1 uniformly from [0.55, 0.85] / [0, 0.3] (seeded).

The int ``labels`` of the dataset contract cannot hold a mask or a soft target, so these travel alongside them on a
`TargetSplit` (a `Split` with two extra arrays); a trainer that reads only ``labels`` trains U-Zeros for ``ignore``
and the hard variant for the smoothed policies.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from medtransfer.data.base import CLASSIFICATION_TASKS, SPLITS, ImageDataset, Split, labels_from_array
from medtransfer.data.decode import decode
from medtransfer.data.fast2d import image_arrays
from medtransfer.data.io import check_aspect, check_size_option, is_volume_path, window_range
from medtransfer.data.splits import check_part, check_split_leak, group_split, normalise_split_names
from medtransfer.errors import DataError, allowed

UNCERTAIN_POLICIES = ("ones", "zeros", "ignore", "smoothed_ones", "smoothed_zeros")
BLANK_LABELS = ("error", "negative")
SMOOTHING_RANGES = {"smoothed_ones": (0.55, 0.85), "smoothed_zeros": (0.0, 0.3)}  # Pham et al. 2021


@dataclass(frozen=True)
class TargetSplit(Split):
    """A multilabel split whose uncertain labels need more than 0/1: ``soft_labels`` float32 (N, L) targets for
    label smoothing, ``label_mask`` bool (N, L) with False where a label must not enter the loss (U-Ignore)."""

    soft_labels: np.ndarray | None = None
    label_mask: np.ndarray | None = None


def uncertain_targets(raw: np.ndarray, policies: Sequence[str], rng: np.random.Generator):
    """(N, L) raw values in {1, 0, -1, NaN} -> int labels, float soft labels (or None), bool mask (or None).

    ``soft`` starts from the final labels of every column, so a U-Ones/U-Zeros column keeps its 1/0 whatever
    column precedes it; only smoothed columns get draws (in column order, so the draws stay those of before)."""
    raw = np.where(np.isnan(raw), 0.0, raw)  # blank = not mentioned = negative
    uncertain = raw == -1
    labels = raw.astype(np.int64)
    mask = None
    for column, policy in enumerate(policies):
        here = uncertain[:, column]
        labels[here, column] = 1 if policy in ("ones", "smoothed_ones") else 0
        if policy == "ignore":
            mask = np.ones(raw.shape, bool) if mask is None else mask
            mask[here, column] = False
    if not any(policy in SMOOTHING_RANGES for policy in policies):
        return labels, None, mask
    soft = labels.astype(np.float32)
    for column, policy in enumerate(policies):
        if policy in SMOOTHING_RANGES:
            here = uncertain[:, column]
            soft[here, column] = rng.uniform(*SMOOTHING_RANGES[policy], int(here.sum()))
    return labels, soft, mask


def had_negative_targets(uncertain: str | Mapping[str, str] | None, class_names: Sequence[str]) -> bool:
    """Whether ``uncertain`` over these labels trained target -1 before soft targets were built from the final
    labels: a U-Ones/U-Zeros label after the first smoothed one kept -1 for its uncertain entries. The grid gives
    such runs new ids (``bench/grid.py``), so their stored results are not reused; all other policies kept theirs."""
    if uncertain is None or not class_names:
        return False
    policies = _policies(uncertain, class_names, "uncertain")
    smoothed = [column for column, policy in enumerate(policies) if policy in SMOOTHING_RANGES]
    return bool(smoothed) and any(policy in ("ones", "zeros") for policy in policies[smoothed[0] + 1:])


def _policies(uncertain: str | Mapping[str, str], class_names: Sequence[str], where: str) -> list[str]:
    """One policy for all labels, or a mapping label -> policy (labels not named use ``zeros``)."""
    if isinstance(uncertain, str):
        chosen = {name: uncertain for name in class_names}
    else:
        unknown = set(uncertain) - set(class_names)
        if unknown:
            raise DataError(f"{where}: uncertain names unknown label(s) {sorted(unknown)}; allowed: "
                            f"{allowed(class_names)}")
        chosen = {name: uncertain.get(name, "zeros") for name in class_names}
    for name, policy in chosen.items():
        if policy not in UNCERTAIN_POLICIES:
            raise DataError(f"{where}: uncertain={policy!r} for {name}; allowed: {allowed(UNCERTAIN_POLICIES)}")
    return [chosen[n] for n in class_names]


def _column(table: pd.DataFrame, column: str, key: str, where: str) -> pd.Series:
    if column not in table.columns:
        raise DataError(f"{where}: {key}={column!r} is not a column; allowed: {allowed(map(str, table.columns))}")
    return table[column]


def _multilabel_values(table: pd.DataFrame, columns: list[str], blank_labels: str, name: str,
                       source: str) -> np.ndarray:
    """(N, L) floats in {1, 0, -1}, NaN where a cell is blank and ``blank_labels`` allows it."""
    if blank_labels not in BLANK_LABELS:
        raise DataError(f"{name}: blank_labels={blank_labels!r}; allowed: {allowed(BLANK_LABELS)}")
    cells = [_column(table, c, "label_columns", name) for c in columns]
    blank = np.stack([c.isna().to_numpy() for c in cells], axis=1)
    raw = np.stack([pd.to_numeric(c, errors="coerce").to_numpy(float) for c in cells], axis=1)
    bad = ~np.isin(raw, (0, 1, -1)) & ~blank  # text coerced to NaN is bad too, not blank
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DataError(f"{name}: column {columns[col]!r} in CSV line {row + 2} holds "
                        f"{table[columns[col]].iloc[row]}; allowed: 1, 0, -1 (uncertain) or blank")
    if blank_labels == "error" and blank.any():
        col = int(np.flatnonzero(blank.any(axis=0))[0])
        lines = np.flatnonzero(blank[:, col]) + 2  # +1 for 1-based, +1 for the header line
        shown = ", ".join(map(str, lines[:10])) + (f" ... ({len(lines)} lines)" if len(lines) > 10 else "")
        raise DataError(f"{name}: {source}: column {columns[col]!r} is blank in CSV line(s) {shown}; allowed: 1, "
                        "0, -1 (uncertain), or blank_labels='negative' to read blanks as 'not mentioned' (0)")
    return raw


def _single_labels(values: pd.Series, class_names, task, where):
    """One label column: class names (mapped through ``class_names``) or integer indices."""
    if values.isna().any():
        row = int(np.flatnonzero(values.isna())[0]) + 2  # +1 for 1-based, +1 for the header line
        raise DataError(f"{where}: label is blank in CSV line {row}; allowed: a class for every image")
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.notna().all():
        names = class_names or tuple(str(v) for v in range(int(numeric.max()) + 1))
        task = task or ("binary" if len(names) == 2 else "multiclass")
        return labels_from_array(numeric.to_numpy(float), task, len(names), where), tuple(names), task
    names = tuple(class_names) if class_names else tuple(sorted(values.astype(str).unique()))
    unknown = sorted(set(values.astype(str)) - set(names))
    if unknown:
        raise DataError(f"{where}: label(s) {unknown[:5]} not in class_names; allowed: {allowed(names)}")
    task = task or ("binary" if len(names) == 2 else "multiclass")
    lookup = {n: i for i, n in enumerate(names)}
    return np.array([lookup[v] for v in values.astype(str)], np.int64), names, task


def _list_labels(values: pd.Series, separator: str, class_names, where: str) -> tuple[np.ndarray, tuple]:
    """'A|B' per row -> (N, L) 0/1; an empty cell means no label."""
    tokens = [[t.strip() for t in str(v).split(separator) if t.strip()] if pd.notna(v) else [] for v in values]
    names = tuple(class_names) if class_names else tuple(sorted({t for row in tokens for t in row}))
    unknown = sorted({t for row in tokens for t in row} - set(names))
    if unknown:
        raise DataError(f"{where}: label(s) {unknown[:5]} not in class_names; allowed: {allowed(names)}")
    lookup = {n: i for i, n in enumerate(names)}
    labels = np.zeros((len(values), len(names)), np.int64)
    for row, found in enumerate(tokens):
        labels[row, [lookup[t] for t in found]] = 1
    return labels, names


def table_dataset(
    table: pd.DataFrame, root: Path, name: str, path_column: str = "path",
    label_columns: str | Sequence[str] = "label", label_separator: str | None = None, task: str | None = None,
    class_names: Sequence[str] | None = None, patient_column: str | None = None, split_column: str | None = None,
    uncertain: str | Mapping[str, str] = "zeros", val_fraction: float | int = 0.1, test_fraction: float | int = 0.2,
    seed: int = 0, size: int | Sequence[int] | None = 224, aspect: str = "pad", channels: int | None = None,
    window=None, orientation: str | None = "RAS", spacing: Sequence[float] | None = None, on_error: str = "raise",
    description: str = "", blank_labels: str = "error", workers: int | None = None, npz_key: str | None = None,
) -> ImageDataset:
    """Build a dataset from an already-read table (the CSV loader and the chest X-ray presets share this)."""
    if task is not None and task not in CLASSIFICATION_TASKS:
        raise DataError(f"{name}: task={task!r}; allowed: {allowed(CLASSIFICATION_TASKS)}")
    check_part(val_fraction, "val_fraction", name)
    check_part(test_fraction, "test_fraction", name)
    check_aspect(aspect, name)
    window = window_range(window)
    paths = _column(table, path_column, "path_column", name)
    if paths.isna().any():
        raise DataError(f"{name}: path is blank in CSV line {int(np.flatnonzero(paths.isna())[0]) + 2}")
    columns = [label_columns] if isinstance(label_columns, str) else list(label_columns)
    soft = mask = None
    if label_separator is not None:
        if len(columns) != 1:
            raise DataError(f"{name}: label_separator needs one label column, got {columns}")
        labels, names = _list_labels(_column(table, columns[0], "label_columns", name), label_separator,
                                     class_names, name)
        task = "multilabel"
    elif len(columns) > 1 or task == "multilabel":
        raw = _multilabel_values(table, columns, blank_labels, name, description or "table")
        names = tuple(class_names) if class_names else tuple(columns)
        labels, soft, mask = uncertain_targets(raw, _policies(uncertain, names, name), np.random.default_rng(seed))
        task = "multilabel"
    else:
        labels, names, task = _single_labels(_column(table, columns[0], "label_columns", name), class_names, task,
                                             name)
    patients = (_column(table, patient_column, "patient_column", name).astype(str).to_numpy()
                if patient_column else None)
    assignment = _assign(table, patients, split_column, val_fraction, test_fraction, seed, name)

    files = [Path(p) if Path(p).is_absolute() else root / str(p) for p in paths]
    spatial_dims = 3 if is_volume_path(files[0]) else 2
    target = check_size_option(size, spatial_dims, name)
    read = functools.partial(image_arrays, orientation=orientation, spacing=tuple(spacing) if spacing else None,
                             size=target, aspect=aspect, window=window, channels=channels, npz_key=npz_key)
    decoded = decode(files, read, assignment, [[f] for f in files], on_error, name, workers)
    splits = {}
    for split in SPLITS:
        kept = decoded.indices[split]
        extra = {"soft_labels": soft[kept] if soft is not None else None,
                 "label_mask": mask[kept] if mask is not None else None}
        kind = TargetSplit if soft is not None or mask is not None else Split
        splits[split] = kind(images=decoded.arrays[split]["image"], labels=labels[kept],
                             patients=patients[kept] if patients is not None else None,
                             **(extra if kind is TargetSplit else {}))
    counts = ", ".join(f"{s} {len(splits[s])}" for s in SPLITS)
    return ImageDataset(name=name, task=task, class_names=names, spatial_dims=spatial_dims,
                        description=f"{description or 'CSV dataset'} ({counts}).{decoded.summary()}",
                        **splits).validate()


def _assign(table, patients, split_column, val_fraction, test_fraction, seed, name) -> np.ndarray:
    """User split (leak-checked) where given; splits it lacks are carved from its train rows by patient."""
    groups = patients if patients is not None else np.array([f"row{i}" for i in range(len(table))])
    if split_column:
        assignment = normalise_split_names(_column(table, split_column, "split_column", name), name)
        if patients is not None:
            check_split_leak(patients, assignment, f"{name}: split column {split_column!r}")
    else:
        assignment = np.full(len(table), "train", dtype=object)
    parts = {s: f for s, f in (("test", test_fraction), ("val", val_fraction)) if s not in set(assignment)}
    train = np.flatnonzero(assignment == "train")
    assignment[train] = group_split(groups[train], parts, seed, name)
    return assignment.astype(str)


def csv_dataset(
    root: str, csv: str, path_column: str = "path", label_columns: str | Sequence[str] = "label",
    label_separator: str | None = None, task: str | None = None, class_names: Sequence[str] | None = None,
    patient_column: str | None = None, split_column: str | None = None,
    uncertain: str | Mapping[str, str] = "zeros", val_fraction: float | int = 0.1, test_fraction: float | int = 0.2,
    seed: int = 0, size: int | Sequence[int] | None = 224, aspect: str = "pad", channels: int | None = None,
    window: str | Sequence[float] | None = None, orientation: str | None = "RAS",
    spacing: Sequence[float] | None = None, on_error: str = "raise", name: str = "csv", blank_labels: str = "error",
    workers: int | None = None, npz_key: str | None = None,
) -> ImageDataset:
    """A CSV (``csv``, relative to ``root``) listing images (``path_column``, relative to ``root``) and labels.

    Without ``split_column`` the split is drawn by patient (``patient_column``) or by image, seeded; with it, the
    user's split is kept, refused if a patient crosses it, and val/test are carved from train only if absent.
    ``blank_labels``: ``error`` refuses blank cells in 0/1 label columns, ``negative`` reads them as 0.
    Volumes stored as ``.npy``/``.npz`` arrays ((D, H, W) or (C, D, H, W)) are read too; ``npz_key`` names the array
    of an ``.npz`` holding several. ``workers`` processes decode the files (default: every core).
    """
    root_path = Path(root).expanduser()
    csv_path = Path(csv) if Path(csv).is_absolute() else root_path / csv
    try:
        table = pd.read_csv(csv_path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"{csv_path}: cannot be read as CSV ({type(e).__name__}: {e})") from None
    return table_dataset(table, root_path, name, path_column, label_columns, label_separator, task, class_names,
                         patient_column, split_column, uncertain, val_fraction, test_fraction, seed, size, aspect,
                         channels, window, orientation, spacing, on_error, f"CSV dataset {csv_path}", blank_labels,
                         workers, npz_key)
