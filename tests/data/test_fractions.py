import numpy as np
import pytest

from medtransfer.data.fractions import describe_subset, label_fraction_indices
from medtransfer.errors import DataError

FRACTIONS = [0.01, 0.1, 0.5, 1.0]


def _imbalanced_labels():
    """700 / 250 / 50 / 3 examples, shuffled: a rare class tests the one-per-class floor."""
    labels = np.repeat(np.arange(4), [700, 250, 50, 3])
    return np.random.default_rng(0).permutation(labels).astype(np.int64)


def _rare_multilabel():
    """500 samples, 5 labels; label 3 has 4 positives and label 4 has one, so small prefixes miss them."""
    rng = np.random.default_rng(1)
    labels = (rng.random((500, 5)) < [0.3, 0.2, 0.1, 0, 0]).astype(np.int64)
    labels[rng.choice(500, 4, replace=False), 3] = 1
    labels[rng.integers(500), 4] = 1
    return labels


@pytest.mark.parametrize("task", ["multiclass", "ordinal"])
def test_single_label_subsets_are_nested_stratified_and_complete(task):
    labels = _imbalanced_labels()
    counts = np.bincount(labels)
    previous = np.array([], dtype=np.int64)
    for fraction in FRACTIONS:
        idx = label_fraction_indices(labels, task, fraction, seed=0)
        assert idx.dtype == np.int64 and np.all(np.diff(idx) > 0)  # sorted, no duplicates
        assert set(previous) <= set(idx)
        kept = np.bincount(labels[idx], minlength=4)
        assert kept.tolist() == [max(1, int(np.floor(fraction * c + 0.5))) for c in counts]
        previous = idx
    assert np.array_equal(previous, np.arange(len(labels)))


def test_stratified_proportions_follow_the_full_set():
    labels = _imbalanced_labels()
    idx = label_fraction_indices(labels, "multiclass", 0.1, seed=5)
    share = np.bincount(labels[idx]) / len(idx)
    assert np.allclose(share[:3], np.bincount(labels)[:3] / len(labels), atol=0.01)


def test_binary_smallest_fraction_keeps_both_classes():
    labels = np.array([0] * 990 + [1] * 10)
    idx = label_fraction_indices(labels, "binary", 0.01, seed=0)
    assert np.bincount(labels[idx]).tolist() == [10, 1]


def test_seed_changes_subset_and_same_seed_repeats_it():
    labels = _imbalanced_labels()
    a, b = (label_fraction_indices(labels, "multiclass", 0.1, seed=s) for s in (0, 0))
    c = label_fraction_indices(labels, "multiclass", 0.1, seed=1)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c) and len(a) == len(c)


def test_multilabel_every_label_has_a_positive_and_fix_up_happens():
    labels = _rare_multilabel()
    idx = label_fraction_indices(labels, "multilabel", 0.01, seed=0)
    assert labels[idx].sum(axis=0).min() >= 1
    assert len(idx) > 5  # beyond the 5-sample prefix: the rare labels 3 and 4 needed added positives


@pytest.mark.parametrize("seed", range(5))
def test_multilabel_subsets_stay_nested_with_the_fix_up(seed):
    """The earliest-positive rule keeps nesting (see the proof in fractions._multilabel) over a fine grid."""
    labels = _rare_multilabel()
    grid = [0.002, 0.004, 0.01, 0.02, 0.05, 0.1, 0.3, 0.5, 1.0]
    subsets = [set(label_fraction_indices(labels, "multilabel", f, seed).tolist()) for f in grid]
    for small, large in zip(subsets, subsets[1:]):
        assert small <= large
    assert subsets[-1] == set(range(len(labels)))
    assert len(subsets[4]) == pytest.approx(25, abs=3)  # a prefix of round(0.05 * 500), plus a few fix-ups


@pytest.mark.parametrize("fraction", [0, -0.1, 1.5, float("nan"), "0.5", True])
def test_fraction_outside_unit_interval_is_rejected(fraction):
    with pytest.raises(DataError, match=r"fraction=.*0 < fraction <= 1"):
        label_fraction_indices(np.array([0, 1, 0, 1]), "binary", fraction, seed=0)


def test_numpy_float_fraction_is_accepted():
    idx = label_fraction_indices(np.array([0, 1, 0, 1]), "binary", np.float32(0.5), seed=0)
    assert len(idx) == 2


def test_class_without_training_example_is_named():
    with pytest.raises(DataError, match="class 1 has no training example"):
        label_fraction_indices(np.array([0, 0, 2, 2]), "multiclass", 0.5, seed=0)
    with pytest.raises(DataError, match="class 2 has no training example"):
        label_fraction_indices(np.array([[1, 0, 0], [0, 1, 0]]), "multilabel", 0.5, seed=0)


@pytest.mark.parametrize(
    "labels, task, fragment",
    [
        (np.array([[0], [1]]), "binary", "shape (2, 1)"),
        (np.array([0.0, 1.0]), "binary", "dtype float64"),
        (np.array([0, 1]), "regression", "task='regression'"),
        (np.array([-1, 0, 1]), "multiclass", "contain -1"),
        (np.array([[2, 1], [0, 1]]), "multilabel", "0/1 for multilabel"),
    ],
)
def test_malformed_labels_are_rejected(labels, task, fragment):
    with pytest.raises(DataError) as err:
        label_fraction_indices(labels, task, 0.5, seed=0)
    assert fragment in str(err.value)


def test_describe_subset_counts_per_class():
    labels = np.array([0, 1, 2, 2, 1, 2])
    assert describe_subset(labels, "multiclass", np.array([0, 2, 3])) == {"n": 3, "per_class": [1, 0, 2]}
    ml = np.array([[1, 0], [1, 1], [0, 1]])
    assert describe_subset(ml, "multilabel", np.array([0, 1])) == {"n": 2, "per_class": [2, 1]}
