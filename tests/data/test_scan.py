"""The pre-training scan: every bad file is named with its reason, or skipped and listed on request."""

import logging

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medtransfer.data import load_dataset
from medtransfer.data.decode import decode
from medtransfer.data.fast2d import image_arrays
from medtransfer.errors import DataError


@pytest.fixture
def folder(tmp_path):
    """Four good grey PNGs, a truncated PNG, an RGB PNG among grey ones, and random bytes named .png."""
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(tmp_path / f"good{i}.png")
    (tmp_path / "truncated.png").write_bytes((tmp_path / "good0.png").read_bytes()[:80])
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "colour.png")
    (tmp_path / "garbage.png").write_bytes(rng.bytes(300))
    return tmp_path


def test_raise_names_every_bad_file_with_its_reason(folder):
    with pytest.raises(DataError) as err:
        load_dataset("image_folder", root=str(folder), size=16, channels=None)
    message = str(err.value)
    assert "3 of 7 file(s) cannot be used" in message
    assert f"{folder / 'truncated.png'}: cannot be read" in message
    assert f"{folder / 'garbage.png'}: cannot be read" in message
    assert f"{folder / 'colour.png'}: has 3 channel(s) but most files have 1" in message
    assert "good" not in message


def test_skip_lists_what_was_skipped_and_keeps_the_rest(folder, caplog):
    with caplog.at_level(logging.WARNING, logger="medtransfer.data.scan"):
        data = load_dataset("image_folder", root=str(folder), size=16, channels=None, on_error="skip")
    assert len(data.train) == 4
    assert "Skipped 3 unusable file(s)" in data.description
    for name in ("truncated.png", "garbage.png", "colour.png"):
        assert name in data.description and name in caplog.text


def test_channels_option_converts_instead_of_reporting(folder):
    (folder / "truncated.png").unlink()
    (folder / "garbage.png").unlink()
    data = load_dataset("image_folder", root=str(folder), size=16, channels=1)
    assert data.train.images.shape == (5, 1, 16, 16)


def test_corrupt_volume_is_named(tmp_path):
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)), tmp_path / "ok.nii.gz")
    (tmp_path / "bad.nii.gz").write_bytes(np.random.default_rng(1).bytes(400))
    nan = np.ones((8, 8, 8), np.float32)
    nan[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(nan, np.eye(4)), tmp_path / "nan.nii.gz")
    with pytest.raises(DataError) as err:
        load_dataset("volume_folder", root=str(tmp_path), size=8)
    assert f"{tmp_path / 'bad.nii.gz'}: cannot be read" in str(err.value)
    assert f"{tmp_path / 'nan.nii.gz'}: contains 1 NaN/infinite values" in str(err.value)


def test_all_bad_or_bad_option_is_refused(tmp_path):
    (tmp_path / "a.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"all 1 file\(s\) are unusable \(first: .*a\.png: cannot be read"):
        load_dataset("image_folder", root=str(tmp_path), on_error="skip")
    with pytest.raises(DataError, match="no files found"):
        decode([], image_arrays, [], [], "raise", "empty", 1)
    with pytest.raises(DataError, match="on_error='ignore'; allowed: raise, skip"):
        load_dataset("image_folder", root=str(tmp_path), on_error="ignore")
