"""Segmentation folders: pairing by pattern, mask values, FOV, sizes, splits; DRIVE on the real files."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medtransfer.data import load_dataset
from medtransfer.data.folders import find_by_pattern
from medtransfer.errors import DataError

DRIVE = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "DRIVE").resolve()


def write_case(root, key, shape=(20, 24), vessel_value=255):
    rng = np.random.default_rng(int(key))
    image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    mask = np.zeros(shape, np.uint8)
    mask[5:9, :] = vessel_value
    fov = np.zeros(shape, np.uint8)
    fov[2:-2, 2:-2] = 255
    for folder, array, name in (("img", image, f"{key}_scan.tif"), ("gt", mask, f"{key}_gt.gif"),
                                ("fov", fov, f"{key}_fov.gif")):
        (root / folder).mkdir(exist_ok=True)
        Image.fromarray(array).save(root / folder / name)
    return image, mask, fov


def test_pairs_by_id_keeps_native_size_and_maps_255_to_class_1(tmp_path):
    cases = {f"{k:02d}": write_case(tmp_path, f"{k:02d}") for k in range(1, 11)}
    data = load_dataset("segmentation_folder", root=str(tmp_path), images="img/{id}_scan.tif",
                        masks="gt/{id}_gt.gif", fov="fov/{id}_fov.gif", class_names=["background", "vessel"],
                        val_fraction=2, test_fraction=3, seed=1)
    assert (len(data.train), len(data.val), len(data.test)) == (5, 2, 3)
    assert data.train.images.shape[1:] == (3, 20, 24) and data.spatial_dims == 2
    found = {}
    for split in (data.train, data.val, data.test):
        for image, mask, fov in zip(split.images, split.labels, split.fov):
            key = next(k for k, c in cases.items() if np.array_equal(c[0], np.moveaxis(image, 0, -1)))
            found[key] = True
            np.testing.assert_array_equal(mask, cases[key][1] // 255)
            np.testing.assert_array_equal(fov, cases[key][2] > 0)
    assert len(found) == 10  # every image once, with its own mask


def test_missing_mask_and_wrong_mask_values_are_reported(tmp_path):
    for k in range(1, 6):
        write_case(tmp_path, f"{k:02d}", vessel_value=128 if k == 2 else 255)
    (tmp_path / "gt" / "04_gt.gif").unlink()
    with pytest.raises(DataError) as err:
        load_dataset("segmentation_folder", root=str(tmp_path), images="img/{id}_scan.tif", masks="gt/{id}_gt.gif",
                     mask_values=[0, 255], val_fraction=1, test_fraction=1)
    assert f"{tmp_path / 'gt' / '04_gt.gif'}: file not found" in str(err.value)
    assert f"{tmp_path / 'gt' / '02_gt.gif'}: mask holds value 128; allowed: [0, 255]" in str(err.value)


def test_resize_uses_nearest_for_masks_and_pads_fov(tmp_path):
    for k in range(1, 6):
        write_case(tmp_path, f"{k:02d}")
    data = load_dataset("segmentation_folder", root=str(tmp_path), images="img/{id}_scan.tif", masks="gt/{id}_gt.gif",
                        fov="fov/{id}_fov.gif", size=32, val_fraction=1, test_fraction=1)
    assert data.image_size == (32, 32)
    assert set(np.unique(data.train.labels)) == {0, 1}
    assert not data.train.fov[:, :3].any()  # 20x24 -> 27x32 padded: top rows are padding outside the FOV


def test_volume_segmentation_reads_image_and_mask_on_one_grid(tmp_path):
    for k in range(4):
        image = np.random.default_rng(k).normal(size=(10, 12, 8)).astype(np.float32)
        mask = np.zeros((10, 12, 8), np.uint8)
        mask[2:5, 3:7, 1:4] = 2
        mask[6:8, 3:7, 1:4] = 1
        for name, array in (("img", image), ("seg", mask)):
            (tmp_path / name).mkdir(exist_ok=True)
            nib.save(nib.Nifti1Image(array, np.diag([-1.5, 1.5, 3.0, 1.0])), tmp_path / name / f"c{k}.nii.gz")
    data = load_dataset("segmentation_folder", root=str(tmp_path), images="img/{id}.nii.gz", masks="seg/{id}.nii.gz",
                        class_names=["background", "kidney", "tumour"], val_fraction=1, test_fraction=1)
    assert data.spatial_dims == 3 and data.train.images.shape[1:] == (1, 10, 12, 8)
    expected = np.zeros((10, 12, 8), int)
    expected[2:5, 3:7, 1:4], expected[6:8, 3:7, 1:4] = 2, 1
    np.testing.assert_array_equal(data.train.labels[0], expected[::-1])  # LAS -> RAS, like the image


def test_pattern_needs_one_id_and_matches_subfolders(tmp_path):
    (tmp_path / "a" / "x").mkdir(parents=True)
    (tmp_path / "a" / "x" / "7_img.png").touch()
    (tmp_path / "a" / "x" / "7_other.png").touch()
    assert list(find_by_pattern(tmp_path, "a/*/{id}_img.png", "t")) == ["7"]
    with pytest.raises(DataError, match=r"must contain \{id\} exactly once"):
        find_by_pattern(tmp_path, "a/*.png", "t")


@pytest.mark.realdata
def test_drive_official_split_native_size_and_vessel_fraction():
    if not (DRIVE / "training" / "images").is_dir():
        pytest.skip(f"{DRIVE} is absent: real-data tests need ../shared/data beside the clone")
    data = load_dataset("drive", root=str(DRIVE))
    assert (len(data.train), len(data.val), len(data.test)) == (16, 4, 20)
    assert data.class_names == ("background", "vessel") and data.image_size == (584, 565) and data.in_chans == 3
    for split in (data.train, data.val, data.test):
        assert split.fov is not None and split.fov.shape == split.labels.shape
        fraction = split.labels[split.fov].mean()
        assert 0.08 < fraction < 0.15, fraction
        assert 0.6 < split.fov.mean() < 0.75  # the circular field of view covers about 69 % of the frame
        assert split.labels[~split.fov].mean() < 0.01  # vessels are annotated inside the FOV
    reference = np.asarray(Image.open(DRIVE / "testing" / "1st_manual" / "01_manual1.gif")) > 0
    assert any(np.array_equal(m, reference) for m in data.test.labels)
    again = load_dataset("drive", root=str(DRIVE))
    np.testing.assert_array_equal(again.val.images, data.val.images)  # the carve-out is seeded
