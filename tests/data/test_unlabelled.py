"""Unlabelled image and volume folders as pre-training data, end to end through pretrain()."""

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from pydicom.uid import generate_uid

from medtransfer.config import PretrainConfig
from medtransfer.config_files import validate_config
from medtransfer.data import load_dataset
from medtransfer.models.checkpoint import read_metadata
from medtransfer.pretrain.run import pretrain
from tests.data.test_io import write_ct_slice


@pytest.fixture
def png_folder(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(12):
        (tmp_path / "pngs" / f"site{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20 + i, 24), dtype=np.uint8)).save(tmp_path / "pngs" / f"site{i % 2}"
                                                                                 / f"{i}.png")
    (tmp_path / "pngs" / "notes.txt").write_text("not an image: ignored by suffix")
    return tmp_path / "pngs"


def test_image_folder_is_train_only_unlabelled(png_folder):
    data = load_dataset("image_folder", root=str(png_folder), size=16)
    assert data.task == "unlabelled" and data.class_names == ("image",)
    assert data.train.images.shape == (12, 1, 16, 16) and len(data.val) == 0 and len(data.test) == 0
    assert (data.train.labels == 0).all()


def test_volume_folder_reads_nifti_files_and_dicom_series(tmp_path):
    for k in range(3):
        volume = np.random.default_rng(k).normal(size=(10, 12, 14)).astype(np.float32)
        nib.save(nib.Nifti1Image(volume, np.diag([1.0, 1.0, 2.0, 1.0])), tmp_path / f"v{k}.nii.gz")
    data = load_dataset("volume_folder", root=str(tmp_path), size=None, spacing=[2.0, 2.0, 2.0])
    assert data.train.images.shape == (3, 1, 6, 6, 14) and data.spatial_dims == 3  # (10 - 1) / 2 + 1 -> 6
    for volume in data.train.images:  # per-volume percentile scaling: 0.5 % of voxels at each end saturate
        assert (volume == 0).mean() >= 0.005 and (volume == 255).mean() >= 0.005
    assert load_dataset("volume_folder", root=str(tmp_path), size=8).image_size == (8, 8, 8)
    for series in ("s1", "s2"):
        uid = generate_uid()
        (tmp_path / "dicom" / series).mkdir(parents=True)
        for z in range(4):
            write_ct_slice(tmp_path / "dicom" / series / f"{z}.dcm", np.full((6, 6), 1024 + 100 * z), z * 2.0, uid)
    series = load_dataset("volume_folder", root=str(tmp_path / "dicom"), pattern="*", dicom_series=True, size=None,
                          window=[0, 300])
    assert series.train.images.shape == (2, 1, 6, 6, 4)
    np.testing.assert_array_equal(series.train.images[0, 0, 0, 0], [0, 85, 170, 255])  # HU 0..300 along z


def test_pretrain_runs_one_epoch_on_an_unlabelled_png_folder(png_folder, tmp_path):
    cfg = validate_config({"method": "simclr", "data": {"name": "image_folder", "root": str(png_folder), "size": 16},
                           "backbone": {"name": "resnet_tiny"}, "epochs": 1, "batch_size": 6}, PretrainConfig)
    checkpoint = pretrain(cfg, tmp_path / "run")
    assert checkpoint.exists() and read_metadata(checkpoint)["dataset"] == "image_folder"
