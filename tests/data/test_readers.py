"""Readers users' data needs: numpy volumes, 3D sizes in CSVs, split id lists, thresholded FOVs, 8-bit fast path."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medtransfer.data import load_dataset
from medtransfer.data.fast2d import decode_image, percentiles_uint16
from medtransfer.data.io import prepare_image, read_image
from medtransfer.errors import DataError


def volume(seed, shape=(6, 10, 8)):
    return np.random.default_rng(seed).normal(100, 20, shape).astype(np.float32)


def test_csv_reads_npy_and_npz_volumes_at_a_three_integer_size(tmp_path):
    rows = []
    for i in range(8):
        if i % 2:
            np.save(tmp_path / f"v{i}.npy", volume(i))
        else:
            np.savez(tmp_path / f"v{i}.npz", scan=volume(i), spare=np.zeros(3))
        rows.append({"path": f"v{i}.{'npy' if i % 2 else 'npz'}", "label": i % 2})
    pd.DataFrame(rows).to_csv(tmp_path / "labels.csv", index=False)
    data = load_dataset("csv", root=str(tmp_path), csv="labels.csv", size=[8, 6, 4], npz_key="scan",
                        val_fraction=1, test_fraction=1)
    assert data.spatial_dims == 3 and data.train.images.shape[1:] == (1, 8, 6, 4)
    with pytest.raises(DataError, match=r"npz_key=None names no array in it; allowed: scan, spare"):
        load_dataset("csv", root=str(tmp_path), csv="labels.csv", size=[8, 6, 4], val_fraction=1, test_fraction=1)


def test_missing_file_without_suffix_is_reported_missing(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.full((8, 8), 9, np.uint8)).save(tmp_path / "b.png")
    pd.DataFrame({"path": ["a.png", "b.png", "scans/c"], "label": [0, 1, 0]}).to_csv(tmp_path / "l.csv", index=False)
    with pytest.raises(DataError, match=r"scans/c: file not found"):
        load_dataset("csv", root=str(tmp_path), csv="l.csv", size=8, val_fraction=0, test_fraction=0)


def test_volume_folder_reads_npy(tmp_path):
    for i in range(3):
        np.save(tmp_path / f"v{i}.npy", volume(i)[None])  # (C, D, H, W)
    data = load_dataset("volume_folder", root=str(tmp_path), size=[6, 10, 8])
    assert data.train.images.shape == (3, 1, 6, 10, 8)


def write_fundus(root, key):
    """A bright disc on a black border, with a vessel line; the mask has the line."""
    yy, xx = np.mgrid[:20, :20]
    disc = (yy - 10) ** 2 + (xx - 10) ** 2 < 64
    image = np.where(disc, 120, 0).astype(np.uint8)
    mask = np.zeros((20, 20), np.uint8)
    mask[10, 5:15] = 255
    (root / "img").mkdir(exist_ok=True)
    (root / "gt").mkdir(exist_ok=True)
    Image.fromarray(np.stack([image] * 3, -1)).save(root / "img" / f"{key}.png")
    Image.fromarray(mask).save(root / "gt" / f"{key}.png")
    return disc


def test_split_ids_from_a_list_or_a_file_and_fov_by_threshold(tmp_path):
    discs = {k: write_fundus(tmp_path, k) for k in ("a", "b", "c", "d", "e")}
    (tmp_path / "test.txt").write_text("d\ne\n")
    data = load_dataset("segmentation_folder", root=str(tmp_path), images="img/{id}.png", masks="gt/{id}.png",
                        test_ids="test.txt", val_ids=["c"], fov={"threshold": 10})
    assert (len(data.train), len(data.val), len(data.test)) == (2, 1, 2)
    np.testing.assert_array_equal(data.test.fov[0], discs["d"])
    with pytest.raises(DataError, match=r"test_ids name\(s\) \['z'\] match no image"):
        load_dataset("segmentation_folder", root=str(tmp_path), images="img/{id}.png", masks="gt/{id}.png",
                     test_ids=["z"])
    with pytest.raises(DataError, match=r"in both test_ids and val_ids"):
        load_dataset("segmentation_folder", root=str(tmp_path), images="img/{id}.png", masks="gt/{id}.png",
                     test_ids=["a"], val_ids=["a"])
    with pytest.raises(DataError, match=r"fov=\{'threshold': 300\}; allowed"):
        load_dataset("segmentation_folder", root=str(tmp_path), images="img/{id}.png", masks="gt/{id}.png",
                     fov={"threshold": 300})


@pytest.mark.parametrize("mode, channels", [("L", None), ("RGB", 1), ("RGBA", 3), ("P", None)])
def test_eight_bit_fast_path_matches_the_monai_path_closely(tmp_path, mode, channels):
    rng = np.random.default_rng(2)
    grey = np.clip(np.cumsum(rng.normal(0, 6, (90, 70)), axis=1) + 128, 0, 255).astype(np.uint8)
    image = Image.fromarray(grey)
    if mode != "L":
        image = Image.fromarray(np.stack([grey, grey // 2, 255 - grey] + ([np.full_like(grey, 255)] * (mode == "RGBA")),
                                         -1)).convert(mode)
    path = tmp_path / "a.png"
    image.save(path)
    fast = decode_image(path, None, None, (32, 32), "pad", None, channels)
    slow = prepare_image(read_image(path), path, (32, 32), "pad", None, channels)
    assert fast.dtype == np.uint8 and fast.shape == slow.shape
    assert np.abs(fast.astype(int) - slow.astype(int)).mean() < 2.5  # filters differ slightly; layout is identical
    pad = np.r_[0:3, 28:32]  # 90x70 -> 32x25, padded 3 + 4 columns by both paths
    assert (fast[:, :, pad] == 0).all() and (slow[:, :, pad] == 0).all() and (fast[:, :, 3:28] > 0).mean() > 0.9


def test_sixteen_bit_fast_path_uses_the_same_percentiles(tmp_path):
    rng = np.random.default_rng(3)
    smooth = np.cumsum(np.cumsum(rng.normal(0, 10, (80, 64)), axis=0), axis=1)  # like a radiograph, not noise
    pixels = (smooth - smooth.min() + 1000).astype(np.uint16)
    assert percentiles_uint16(pixels) == pytest.approx(tuple(np.percentile(pixels, [0.5, 99.5])), abs=1e-6)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    fast = decode_image(tmp_path / "a.png", None, None, (40, 40), "pad", None, None)
    slow = prepare_image(read_image(tmp_path / "a.png"), tmp_path / "a.png", (40, 40), "pad", None, None)
    assert fast.shape == slow.shape == (1, 40, 40) and fast.dtype == np.uint8
    assert np.abs(fast.astype(int) - slow.astype(int)).mean() < 2.5
