"""Synthetic segmentation sets and label fractions of segmentation data (whole images, nested, seeded)."""

import numpy as np
import pytest
from scipy.ndimage import binary_erosion

from medtransfer.data import load_dataset
from medtransfer.data.fractions import describe_subset, label_fraction_indices
from medtransfer.errors import DataError


@pytest.fixture(scope="module")
def seg2d():
    return load_dataset("synthetic_seg2d", size=48, n_train=12, n_val=3, n_test=3, seed=1)


def test_2d_set_meets_the_segmentation_contract_with_a_circular_field_of_view(seg2d):
    assert seg2d.task == "segmentation" and seg2d.class_names == ("background", "vessel", "blob")
    assert seg2d.train.images.shape == (12, 1, 48, 48) and seg2d.train.labels.shape == (12, 48, 48)
    fov = seg2d.train.fov[0]
    yy, xx = np.mgrid[:48, :48]
    assert np.array_equal(fov, np.hypot(yy - 23.5, xx - 23.5) <= 0.46 * 48)
    assert (seg2d.train.labels[:, ~fov] == 0).all()  # nothing is labelled outside the field of view
    assert seg2d.train.images[:, 0, ~fov].mean() < 10  # and the image is dark there, like a fundus photograph
    for c in (1, 2):
        assert all((m == c).any() for m in seg2d.train.labels)


def test_vessels_are_thin_and_darker_than_the_background_and_blobs_brighter(seg2d):
    labels, images = seg2d.train.labels, seg2d.train.images[:, 0].astype(float)
    vessel = labels == 1
    # a 1-3 px wide tube mostly vanishes under two erosions; a blob or a thick band would survive
    eroded = np.stack([binary_erosion(v, iterations=2) for v in vessel])
    assert eroded.sum() < 0.05 * vessel.sum()
    background = (labels == 0) & seg2d.train.fov
    assert images[vessel].mean() < images[background].mean() - 30
    assert images[labels == 2].mean() > images[background].mean() + 30


def test_seeded_and_each_split_has_its_own_stream():
    a = load_dataset("synthetic_seg2d", size=32, n_train=4, n_val=2, n_test=2, seed=5)
    b = load_dataset("synthetic_seg2d", size=32, n_train=4, n_val=2, n_test=2, seed=5)
    c = load_dataset("synthetic_seg2d", size=32, n_train=4, n_val=2, n_test=2, seed=6)
    d = load_dataset("synthetic_seg2d", size=32, n_train=6, n_val=2, n_test=2, seed=5)
    assert np.array_equal(a.train.images, b.train.images) and np.array_equal(a.test.labels, b.test.labels)
    assert not np.array_equal(a.train.images, c.train.images)
    assert np.array_equal(a.test.images, d.test.images)  # more training images leave the test split unchanged


def test_3d_volumes_have_no_field_of_view_and_every_class():
    data = load_dataset("synthetic_seg3d", size=24, n_train=3, n_val=1, n_test=1)
    assert data.spatial_dims == 3 and data.train.images.shape == (3, 1, 24, 24, 24)
    assert data.train.fov is None
    assert set(np.unique(data.train.labels)) == {0, 1, 2}


@pytest.mark.parametrize("option", [{"size": 8}, {"n_train": 0}, {"channels": 0}, {"seed": -1}])
def test_bad_options_are_refused(option):
    with pytest.raises(DataError, match=next(iter(option))):
        load_dataset("synthetic_seg2d", **option)


def test_segmentation_label_fractions_are_nested_seeded_image_subsets_of_at_least_one(seg2d):
    masks = seg2d.train.labels
    small = label_fraction_indices(masks, "segmentation", 0.1, seed=0)
    half = label_fraction_indices(masks, "segmentation", 0.5, seed=0)
    full = label_fraction_indices(masks, "segmentation", 1.0, seed=0)
    assert len(small) == 1 and len(half) == 6 and np.array_equal(full, np.arange(12))
    assert set(small) <= set(half)
    assert np.array_equal(half, label_fraction_indices(masks, "segmentation", 0.5, seed=0))
    others = [tuple(label_fraction_indices(masks, "segmentation", 0.5, seed=s)) for s in range(1, 6)]
    assert any(o != tuple(half) for o in others)
    counts = describe_subset(masks, "segmentation", half)
    assert counts["n"] == 6 and counts["per_class"] == np.bincount(masks[half].ravel()).tolist()


def test_segmentation_fractions_refuse_per_image_labels():
    with pytest.raises(DataError, match="class-index masks"):
        label_fraction_indices(np.zeros(10, np.int64), "segmentation", 0.5, seed=0)
