import time

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from medtransfer.data.synthetic import make_synthetic, synthetic2d, synthetic3d
from medtransfer.errors import DataError


def _arrays(ds):
    return [a for s in (ds.train, ds.val, ds.test) for a in (s.images, s.labels)]


@pytest.mark.parametrize("dims, size", [(2, 32), (3, 16)])
def test_same_seed_is_bit_identical_and_other_seed_differs(dims, size):
    kw = dict(spatial_dims=dims, size=size, n_train=30, n_val=9, n_test=9)
    a, b, c = make_synthetic(seed=3, **kw), make_synthetic(seed=3, **kw), make_synthetic(seed=4, **kw)
    assert all(np.array_equal(x, y) for x, y in zip(_arrays(a), _arrays(b)))
    for split_a, split_c in zip((a.train, a.val, a.test), (c.train, c.val, c.test)):
        assert not np.array_equal(split_a.images, split_c.images)


def test_splits_come_from_independent_streams():
    small, large = make_synthetic(n_train=30, n_val=12, n_test=12), make_synthetic(n_train=60, n_val=12, n_test=12)
    assert np.array_equal(small.val.images, large.val.images)
    assert np.array_equal(small.test.labels, large.test.labels)


def test_layout_and_metadata_2d_and_3d():
    ds2, ds3 = synthetic2d(n_train=12, n_val=3, n_test=3), synthetic3d(size=12, n_train=12, n_val=3, n_test=3)
    assert ds2.train.images.shape == (12, 1, 32, 32) and ds2.train.images.dtype == np.uint8
    assert ds3.test.images.shape == (3, 1, 12, 12, 12) and ds3.spatial_dims == 3
    assert (ds2.name, ds3.name, ds2.task) == ("synthetic2d", "synthetic3d", "multiclass")
    assert ds2.class_names == ("healthy", "nodule", "cyst") and "synthetic" in ds2.description.lower()
    assert ds2.train.labels.dtype == np.int64
    # Images use the dynamic range: dark background outside the body, bright tissue inside.
    assert ds2.train.images.min() < 20 and ds2.train.images.max() > 150


def test_3d_defaults_match_the_documented_sizes():
    ds = synthetic3d(n_val=2, n_test=2)  # defaults: size 24, n_train 600
    assert ds.train.images.shape == (600, 1, 24, 24, 24)


def test_channels_give_tinted_multichannel_images():
    ds = make_synthetic(n_train=30, n_val=3, n_test=3, channels=3)
    assert ds.in_chans == 3 and ds.train.images.shape == (30, 3, 32, 32)
    means = ds.train.images.reshape(30, 3, -1).mean(axis=(0, 2))
    assert means[0] > means[2] * 1.2  # the tint makes channels differ, not three copies of one image


def test_classes_are_balanced_and_shuffled():
    labels = make_synthetic(n_train=1200, n_val=3, n_test=3).train.labels
    assert np.bincount(labels).tolist() == [400, 400, 400]
    assert not np.array_equal(labels[:30], np.arange(30) % 3)


def test_generation_is_vectorised_fast():
    start = time.perf_counter()
    make_synthetic(n_train=3000, n_val=1, n_test=1)
    assert time.perf_counter() - start < 5.0  # ~0.5 s on 2 cores; a per-pixel Python loop would take minutes


@pytest.mark.parametrize(
    "kw, fragment",
    [
        ({"spatial_dims": 4}, "spatial_dims=4"),
        ({"size": 4}, "size=4"),
        ({"channels": 0}, "channels=0"),
        ({"n_val": 0}, "n_val=0"),
        ({"n_train": 2}, "n_train=2"),
        ({"seed": -1}, "seed=-1"),
        ({"size": 32.0}, "size=32.0"),
    ],
)
def test_bad_arguments_raise_data_error(kw, fragment):
    with pytest.raises(DataError, match=fragment):
        make_synthetic(**kw)


def test_label_is_learnable_by_a_small_cnn_2d(one_thread):
    torch.manual_seed(0)
    ds = make_synthetic(n_train=900, n_val=1, n_test=300, seed=1)
    x, y = torch.tensor(ds.train.images, dtype=torch.float32) / 255, torch.tensor(ds.train.labels)
    net = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(32, 3),
    )
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(2):
        for batch in torch.randperm(len(x)).split(32):
            loss = nn.functional.cross_entropy(net(x[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        pred = net(torch.tensor(ds.test.images, dtype=torch.float32) / 255).argmax(1).numpy()
    assert (pred == ds.test.labels).mean() > 0.7  # chance is 1/3; this reaches ~0.9 in two epochs


def test_label_is_learnable_from_blob_features_3d():
    """A difference-of-Gaussians blob detector sees nodules (bright) and cysts (dark centre) in volumes."""
    ds = make_synthetic(spatial_dims=3, size=16, n_train=400, n_val=1, n_test=300, seed=2)

    def features(images):
        x = images[:, 0].astype(np.float32) / 255
        dog = ndimage.gaussian_filter(x, (0, 0.8, 0.8, 0.8)) - ndimage.gaussian_filter(x, (0, 2, 2, 2))
        flat = dog.reshape(len(x), -1)
        return np.stack([flat.max(1), flat.min(1), *np.percentile(flat, [1, 99], axis=1)], 1)

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    clf.fit(features(ds.train.images), ds.train.labels)
    assert clf.score(features(ds.test.images), ds.test.labels) > 0.5  # chance is 1/3; this reaches ~0.6
