import dataclasses

import numpy as np
import pytest

from medtransfer.data.base import ImageDataset, Split, labels_from_array
from medtransfer.errors import DataError


def _split(n=6, labels=None, shape=(1, 8, 8), dtype=np.uint8):
    labels = np.arange(n, dtype=np.int64) % 3 if labels is None else labels
    return Split(images=np.zeros((n, *shape), dtype), labels=labels)


def _dataset(**changes):
    ds = ImageDataset(
        name="toy", task="multiclass", class_names=("a", "b", "c"), spatial_dims=2,
        train=_split(), val=_split(3), test=_split(3),
    )
    return dataclasses.replace(ds, **changes)


def test_valid_dataset_passes_and_reports_its_layout():
    ds = _dataset(train=_split(6, shape=(3, 8, 10)), val=_split(3, shape=(3, 8, 10)), test=_split(3, shape=(3, 8, 10)))
    assert ds.validate() is ds
    assert (ds.num_classes, ds.in_chans, ds.image_size, len(ds.train)) == (3, 3, (8, 10), 6)


def test_valid_3d_multilabel_dataset_passes():
    labels = np.array([[1, 0], [0, 1], [1, 1]])
    split = Split(np.zeros((3, 1, 4, 5, 6), np.uint8), labels)
    ds = ImageDataset("vol", "multilabel", ("x", "y"), 3, split, split, split).validate()
    assert ds.image_size == (4, 5, 6)


@pytest.mark.parametrize(
    "changes, fragments",
    [
        ({"task": "regression"}, ["task='regression'", "multiclass"]),
        ({"spatial_dims": 4}, ["spatial_dims=4", "2, 3"]),
        ({"task": "binary"}, ["binary", "exactly 2"]),
        ({"train": _split(dtype=np.float32)}, ["train.images", "float32", "uint8"]),
        ({"val": _split(3, shape=(8, 8))}, ["val.images", "ndim 3", "ndim 4"]),
        ({"test": _split(3, shape=(3, 8, 8))}, ["test.images", "(3, 8, 8)", "(1, 8, 8)"]),
        ({"val": _split(3, labels=np.array([0, 1]))}, ["val", "2 labels for 3 images"]),
        ({"val": _split(3, labels=np.array([0, 1, 3]))}, ["val.labels", "contains 3", "0..2"]),
        ({"val": _split(3, labels=np.array([0.0, 1.0, 2.0]))}, ["val.labels", "float64", "integer"]),
        ({"train": _split(6, labels=np.array([0, 0, 2, 2, 0, 2]))}, ["train has no example of class 1 (b)"]),
        ({"test": _split(0, labels=np.zeros(0, np.int64))}, ["test split is empty"]),
    ],
)
def test_validate_names_the_problem(changes, fragments):
    with pytest.raises(DataError) as err:
        _dataset(**changes).validate()
    for fragment in fragments:
        assert fragment in str(err.value)


def test_validate_multilabel_needs_every_label_positive_in_train():
    split = Split(np.zeros((3, 1, 4, 4), np.uint8), np.array([[1, 0], [1, 0], [0, 0]]))
    with pytest.raises(DataError, match=r"no positive example of class 1 \(y\)"):
        ImageDataset("ml", "multilabel", ("x", "y"), 2, split, split, split).validate()


def test_validate_multilabel_rejects_wrong_label_count_and_non_binary_values():
    good = Split(np.zeros((2, 1, 4, 4), np.uint8), np.array([[1, 0], [0, 1]]))
    wide = Split(good.images, np.array([[1, 0, 1], [0, 1, 0]]))
    with pytest.raises(DataError, match=r"shape \(2, 3\).*\(N, 2\)"):
        ImageDataset("ml", "multilabel", ("x", "y"), 2, good, wide, good).validate()
    twos = Split(good.images, np.array([[2, 0], [0, 1]]))
    with pytest.raises(DataError, match="contains 2; allowed: 0 or 1"):
        ImageDataset("ml", "multilabel", ("x", "y"), 2, good, twos, good).validate()


def test_labels_from_array_flattens_column_and_casts_to_int64():
    out = labels_from_array(np.array([[0.0], [2.0], [1.0]], np.float32), "multiclass", 3, "f.npz: train_labels")
    assert out.dtype == np.int64 and out.tolist() == [0, 2, 1]


def test_labels_from_array_keeps_multilabel_matrix():
    out = labels_from_array(np.array([[True, False], [False, True]]), "multilabel", 2, "w")
    assert out.dtype == np.int64 and out.tolist() == [[1, 0], [0, 1]]


@pytest.mark.parametrize(
    "raw, task, fragment",
    [
        (np.array([0.0, np.nan, 1.0]), "binary", "contains nan"),
        (np.array([0.0, np.inf]), "binary", "contains inf"),
        (np.array([0.0, 1.5]), "binary", "non-integer 1.5"),
        (np.array([0, 2]), "binary", "contains 2; allowed: 0..1"),
        (np.array([-1, 1]), "ordinal", "contains -1"),
        (np.array([1e30, 0.0]), "binary", "contains 1e+30"),  # would wrap around in a blind int64 cast
        (np.array([[0, 1, 1]]), "multiclass", "shape (1, 3)"),
        (np.array([[0, 1]]), "multilabel", "(N, 3)"),
        (np.array(["0", "1"]), "binary", "dtype <U1"),
        (np.array([0, 1]), "segmentation", "task='segmentation'"),
    ],
)
def test_labels_from_array_rejects_bad_values_naming_where(raw, task, fragment):
    num_classes = 3 if task in ("multiclass", "multilabel", "ordinal") else 2
    with pytest.raises(DataError) as err:
        labels_from_array(raw, task, num_classes, "pneumoniamnist.npz: train_labels")
    assert "pneumoniamnist.npz: train_labels" in str(err.value)
    assert fragment in str(err.value)
