"""Imbalance subsets: exact ratios, seeded, nested in label fractions, the rare class kept; resample re-drawn per
epoch and reproducible; unreachable ratios refused naming the largest reachable one."""

import numpy as np
import pytest

from medtransfer.data.fractions import label_fraction_indices
from medtransfer.data.imbalance import EpochSampler, plan_imbalance
from medtransfer.imbalance import Imbalance
from medtransfer.errors import ConfigError

# class 0 is the majority (600), class 1 the natural minority (200): natural ratio 3 : 1
BINARY = np.random.default_rng(5).permutation(np.repeat([0, 1], [600, 200])).astype(np.int64)
NAMES = ["pneumonia", "normal"]


def plan(ratio, mode="subsample", labels=BINARY, fraction=1.0, seed=0, rare=None, task="binary", names=NAMES):
    subset = label_fraction_indices(labels, task, fraction, seed)
    setting = None if ratio is None else Imbalance(ratio, mode, rare)
    return plan_imbalance(labels, task, subset, seed, setting, rare, names, "the test set"), subset


def counts(labels, idx, k=2):
    return np.bincount(labels[idx], minlength=k)


@pytest.mark.parametrize("ratio, expected", [(2, [400, 200]), (3, [600, 200]), (10, [600, 60]), (50, [600, 12])])
def test_subsample_ratio_is_exact_and_keeps_the_minority_below_the_natural_ratio(ratio, expected):
    p, subset = plan(ratio)
    assert counts(BINARY, p.indices).tolist() == expected
    assert p.record["achieved_ratio"] == ratio and p.record["natural_ratio"] == 3.0 and p.record["rare_class"] == 1
    assert set(p.indices) <= set(subset) and p.draw is None
    if ratio <= 3:  # the minority is kept whole; only the majority is cut
        assert set(np.flatnonzero(BINARY == 1)) <= set(p.indices)


def test_natural_ratio_keeps_the_subset_and_records_it():
    p, subset = plan(None)
    np.testing.assert_array_equal(p.indices, subset)
    assert p.record == {"mode": None, "ratio": None, "rare_class": 1, "rare_named": False, "natural_ratio": 3.0,
                        "achieved_ratio": 3.0, "per_class": [600, 200]}


def test_subsets_are_seeded_and_nested_in_label_fractions_and_each_other():
    a, _ = plan(10, seed=1)
    np.testing.assert_array_equal(a.indices, plan(10, seed=1)[0].indices)
    assert not np.array_equal(a.indices, plan(10, seed=2)[0].indices)
    for fraction in (0.1, 0.5):
        small, small_fraction = plan(10, fraction=fraction, seed=1)
        assert set(small.indices) <= set(small_fraction)  # inside its label fraction's subset
        assert set(small.indices) <= set(a.indices)  # and inside the same ratio at more labels
    assert set(plan(50, seed=1)[0].indices) <= set(a.indices)  # a stronger ratio lies inside a weaker one


def test_named_rare_class_makes_the_other_class_the_majority():
    p, _ = plan(10, rare="pneumonia")
    assert counts(BINARY, p.indices).tolist() == [20, 200]  # normal is now the majority, at 10 : 1
    assert p.record["rare_class"] == 0 and p.record["rare_named"] and p.record["achieved_ratio"] == 10


def test_multiclass_caps_each_class_against_the_smallest():
    labels = np.repeat([0, 1, 2], [500, 120, 40]).astype(np.int64)
    p, _ = plan(2, labels=labels, task="multiclass", names=["a", "b", "c"])
    assert counts(labels, p.indices, 3).tolist() == [80, 80, 40]
    p, _ = plan(5, labels=labels, task="multiclass", names=["a", "b", "c"])
    assert counts(labels, p.indices, 3).tolist() == [200, 120, 40]  # b is below 5 x 40 and kept whole


def test_unreachable_ratio_names_the_largest_reachable_one():
    with pytest.raises(ConfigError, match=r"imbalance.ratios: 700 is out of reach .*largest reachable ratio: 600"):
        plan(700)
    # a 1 % subset: 6 of the majority, 2 of the minority
    with pytest.raises(ConfigError, match=r"largest reachable ratio: 6$"):
        plan(10, fraction=0.01)
    with pytest.raises(ConfigError, match=r"resample keeps all 200 .*largest reachable ratio: 3 "):
        plan(10, mode="resample")


def test_imbalance_refused_for_multilabel_and_unknown_rare_class():
    labels = np.eye(3, dtype=np.int64)[np.arange(30) % 3]
    with pytest.raises(ConfigError, match="multilabel task"):
        plan(2, labels=labels, task="multilabel", names=["a", "b", "c"])
    assert plan(None, labels=labels, task="multilabel", names=["a", "b", "c"])[0] is None
    with pytest.raises(ConfigError, match="rare_class: 'cat' is not a class .* allowed: normal, pneumonia"):
        plan(2, rare="cat")


def test_resample_keeps_the_minority_and_redraws_the_majority_every_epoch():
    p, subset = plan(2, mode="resample")
    np.testing.assert_array_equal(p.indices, subset)  # the run holds all; the sampler picks per epoch
    sampler = EpochSampler(p.draw)
    epochs = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        drawn = subset[list(sampler)]
        assert len(drawn) == len(set(drawn)) == 600 and counts(BINARY, drawn).tolist() == [400, 200]
        epochs.append(frozenset(drawn))
    assert len(set(epochs)) == 3  # a fresh majority draw each epoch
    again = EpochSampler(plan(2, mode="resample")[0].draw)
    again.set_epoch(1)
    assert frozenset(subset[list(again)]) == epochs[1]  # reproducible per seed and epoch
    other = EpochSampler(plan(2, mode="resample", seed=3)[0].draw)
    assert frozenset(subset[list(other)]) != epochs[0]
    assert len(EpochSampler(p.draw, min_samples=1000)) == 1000
    unset = EpochSampler(p.draw)  # passes without set_epoch (a DDP wrapper) still advance through the epochs
    assert [frozenset(subset[list(unset)]) for _ in range(3)] == epochs
