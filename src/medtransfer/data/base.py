"""The one in-memory dataset layout every loader produces and every model, trainer and evaluator consumes.

Keeping images as uint8 channel-first arrays and labels as int64 means loaders differ only in how they read files;
everything downstream (normalisation, augmentation, 2D/3D backbones) can rely on one shape convention.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medtransfer.errors import DataError, allowed

CLASSIFICATION_TASKS = ("binary", "multiclass", "multilabel", "ordinal")
TASKS = (*CLASSIFICATION_TASKS, "segmentation", "unlabelled")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Split:
    """One split: uint8 images (N, C, *spatial) and integer labels.

    Labels are (N,) class indices, (N, L) 0/1 for multilabel, (N, *spatial) class-index masks for segmentation
    (0 = background) and (N,) zeros for unlabelled images. ``fov`` (N, *spatial) bool marks where segmentation
    metrics count (e.g. DRIVE's field-of-view mask); ``patients`` (N,) str lets splits be checked for patient leaks.
    """

    images: np.ndarray
    labels: np.ndarray
    fov: np.ndarray | None = None
    patients: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.images)


@dataclass(frozen=True)
class ImageDataset:
    """A labelled train/val/test image set; `validate` is the contract loaders must meet before returning it."""

    name: str
    task: str
    class_names: tuple[str, ...]
    spatial_dims: int
    train: Split
    val: Split
    test: Split
    description: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_chans(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def image_size(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.train.images.shape[2:])

    def validate(self) -> "ImageDataset":
        """Fail early with one actionable message instead of a shape error deep inside training."""
        name = self.name
        if self.task not in TASKS:
            raise DataError(f"{name}: task={self.task!r} is unknown; allowed: {allowed(TASKS)}")
        if self.spatial_dims not in (2, 3):
            raise DataError(f"{name}: spatial_dims={self.spatial_dims!r}; allowed: 2, 3")
        if self.task == "binary" and self.num_classes != 2:
            raise DataError(
                f"{name}: binary task has {self.num_classes} class_names {self.class_names}; allowed: exactly 2"
            )
        if self.num_classes < 1:
            raise DataError(f"{name}: class_names is empty; allowed: at least one name per class")
        layout = None
        for split_name in SPLITS:
            split = getattr(self, split_name)
            where = f"{name}: {split_name}"
            _check_images(split.images, self.spatial_dims, where)
            if len(split) == 0:
                if self.task == "unlabelled" and split_name != "train":
                    continue  # pre-training data needs no held-out splits
                raise DataError(f"{where} split is empty; allowed: at least one example")
            if layout is None:
                layout = split.images.shape[1:]
            elif split.images.shape[1:] != layout:
                raise DataError(
                    f"{where}.images has (C, *spatial)={split.images.shape[1:]} but train has {layout}; "
                    "allowed: the same channels and size in every split"
                )
            labels = np.asarray(split.labels)
            if not np.issubdtype(labels.dtype, np.integer):
                raise DataError(
                    f"{where}.labels dtype {labels.dtype}; allowed: an integer dtype (use labels_from_array)"
                )
            if len(labels) != len(split.images):
                raise DataError(
                    f"{where}: {len(labels)} labels for {len(split.images)} images; allowed: one label row per image"
                )
            if self.task == "segmentation":
                _check_masks(split, self.num_classes, where)
            else:
                _check_labels(labels, self.task, self.num_classes, f"{where}.labels")
            if split.patients is not None and len(split.patients) != len(split.images):
                raise DataError(f"{where}: {len(split.patients)} patient ids for {len(split.images)} images; "
                                "allowed: one patient id per image")
        check_patient_leak(self)
        if self.task != "unlabelled":
            _check_all_classes_present(self.train.labels, self.task, self.class_names, name)
        return self


def check_patient_leak(data: "ImageDataset") -> None:
    """A patient in two splits inflates test scores (the model has seen that anatomy); refuse such splits."""
    seen: dict[str, str] = {}
    for split_name in SPLITS:
        patients = getattr(data, split_name).patients
        if patients is None:
            continue
        for patient in map(str, np.unique(patients)):
            if patient in seen and seen[patient] != split_name:
                leaked = sorted(set(map(str, np.unique(patients))) & {p for p, s in seen.items() if s != split_name})
                raise DataError(f"{data.name}: patient(s) {', '.join(leaked[:10])}"
                                f"{' ...' if len(leaked) > 10 else ''} appear in both {seen[patient]} and "
                                f"{split_name}; allowed: each patient in one split only (split by patient id)")
            seen.setdefault(patient, split_name)


def _check_masks(split: Split, num_classes: int, where: str) -> None:
    shape = (len(split.images), *split.images.shape[2:])
    if split.labels.shape != shape:
        raise DataError(f"{where}.labels (masks) have shape {split.labels.shape}; allowed: {shape}, "
                        "one class-index mask per image")
    bad = split.labels[(split.labels < 0) | (split.labels >= num_classes)]
    if bad.size:
        raise DataError(f"{where}.labels (masks) contain {bad.flat[0]}; allowed: 0..{num_classes - 1}")
    if split.fov is not None and split.fov.shape != shape:
        raise DataError(f"{where}.fov has shape {split.fov.shape}; allowed: {shape}")


def _check_images(images: np.ndarray, spatial_dims: int, where: str) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        dtype = getattr(images, "dtype", type(images).__name__)
        raise DataError(f"{where}.images dtype {dtype}; allowed: uint8 numpy array")
    want = spatial_dims + 2
    if images.ndim != want:
        layout = "(N, C, H, W)" if spatial_dims == 2 else "(N, C, D, H, W)"
        raise DataError(f"{where}.images has shape {images.shape} (ndim {images.ndim}); allowed: ndim {want}, {layout}")


def _check_labels(labels: np.ndarray, task: str, num_classes: int, where: str) -> None:
    if task == "multilabel":
        if labels.ndim != 2 or labels.shape[1] != num_classes:
            raise DataError(f"{where} has shape {labels.shape}; allowed: (N, {num_classes}) for {num_classes} labels")
        bad = labels[(labels != 0) & (labels != 1)]
        if bad.size:
            raise DataError(f"{where} contains {bad.flat[0]}; allowed: 0 or 1")
        return
    if labels.ndim != 1:
        raise DataError(f"{where} has shape {labels.shape}; allowed: (N,) class indices for task {task}")
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise DataError(f"{where} contains {bad.flat[0]}; allowed: 0..{num_classes - 1}")


def _check_all_classes_present(labels: np.ndarray, task: str, class_names: tuple[str, ...], name: str) -> None:
    """Stratified label fractions and per-class AUC need at least one training example of every class."""
    if task == "multilabel":
        counts = labels.sum(axis=0)
    else:
        counts = np.bincount(labels.reshape(-1).astype(np.int64), minlength=len(class_names))
    missing = [f"{i} ({class_names[i]})" for i in np.flatnonzero(counts == 0)]
    if missing:
        what = "positive example" if task == "multilabel" else "example"
        raise DataError(
            f"{name}: train has no {what} of class {', '.join(missing)}; allowed: every class present at least once"
        )


def labels_from_array(raw, task: str, num_classes: int, where: str) -> np.ndarray:
    """Convert a raw label array (any numeric dtype, (N,), (N, 1) or (N, L)) to int64 in the layout of `Split`.

    Files store labels as floats or (N, 1) columns; converting here, with the file and key in `where`, turns a NaN or
    a stray 2.5 into an error at load time rather than a silently wrong class after an int cast.
    """
    if task not in CLASSIFICATION_TASKS:
        raise DataError(f"{where}: task={task!r} has no per-image class labels; allowed: {allowed(CLASSIFICATION_TASKS)}")
    arr = np.asarray(raw)
    if not (arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise DataError(f"{where} has dtype {arr.dtype}; allowed: bool, integer or real floating dtype")
    if task == "multilabel":
        if arr.ndim != 2 or arr.shape[1] != num_classes:
            raise DataError(f"{where} has shape {arr.shape}; allowed: (N, {num_classes}) for {num_classes} labels")
    elif arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    elif arr.ndim != 1:
        raise DataError(f"{where} has shape {arr.shape}; allowed: (N,) or (N, 1) for task {task}")
    if np.issubdtype(arr.dtype, np.floating):
        nonfinite = arr[~np.isfinite(arr)]
        if nonfinite.size:
            raise DataError(f"{where} contains {nonfinite.flat[0]} ({nonfinite.size} values); allowed: finite integers")
        fractional = arr[arr != np.round(arr)]
        if fractional.size:
            raise DataError(f"{where} contains non-integer {fractional.flat[0]}; allowed: integer class values")
    _check_labels(arr, task, num_classes, where)  # before the cast, so 1e30 cannot wrap around into range
    return arr.astype(np.int64)
