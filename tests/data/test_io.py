"""Reading single files: layout, spacing, orientation and intensity rules, checked against arrays we wrote."""

import nibabel as nib
import nrrd
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from medtransfer.data.io import (UnreadableFile, fit_size, match_channels, prepare_image, read_image, read_volume,
                                 to_unit255, window_range)
from medtransfer.errors import DataError


def write_ct_slice(path, pixels, z, series_uid, spacing=(0.5, 0.7), thickness=2.5, intercept=-1024.0):
    """A minimal valid CT slice (pydicom), stored as raw values with a rescale intercept, like scanners do."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = series_uid, series_uid, series_uid
    ds.Modality, ds.PatientID, ds.InstanceNumber = "CT", "p1", int(z * 10)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PixelSpacing = [spacing[0], spacing[1]]  # row spacing, column spacing
    ds.SliceThickness = thickness
    ds.ImagePositionPatient = [0.0, 0.0, float(z)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.RescaleSlope, ds.RescaleIntercept = 1.0, intercept
    ds.PixelData = pixels.astype(np.int16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_png_keeps_8_bit_values_in_row_column_order(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (20, 30), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    loaded = read_image(tmp_path / "a.png")
    assert loaded.array.shape == (1, 20, 30) and loaded.eight_bit
    np.testing.assert_array_equal(prepare_image(loaded, tmp_path / "a.png", None, "pad", None, None)[0], pixels)


def test_rgb_tiff_is_channel_first_and_converts_to_grey_by_luminance(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 256, (12, 17, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.tif")
    loaded = read_image(tmp_path / "a.tif")
    np.testing.assert_array_equal(loaded.array, np.moveaxis(pixels, -1, 0))
    grey = match_channels(loaded.array, 1, tmp_path / "a.tif")
    np.testing.assert_allclose(grey[0], pixels @ np.array([0.299, 0.587, 0.114]), rtol=1e-5)
    with pytest.raises(UnreadableFile, match="has 3 channels; allowed: 2"):
        match_channels(loaded.array, 2, tmp_path / "a.tif")


def test_16_bit_png_is_scaled_between_percentiles(tmp_path):
    pixels = (np.arange(40 * 50).reshape(40, 50) * 30).astype(np.uint16)
    Image.fromarray(pixels).save(tmp_path / "a16.png")
    loaded = read_image(tmp_path / "a16.png")
    assert not loaded.eight_bit and loaded.array.max() == pixels.max()
    lo, hi = np.percentile(pixels, (0.5, 99.5))
    expected = np.clip((pixels - lo) / (hi - lo), 0, 1) * 255
    np.testing.assert_allclose(to_unit255(loaded, None)[0], expected, rtol=1e-5, atol=1e-3)


def test_nifti_spacing_and_orientation_to_ras(tmp_path):
    data = np.random.default_rng(2).normal(size=(6, 7, 8)).astype(np.float32)
    affine = np.diag([-2.0, 3.0, 4.0, 1.0])  # LAS: the first axis runs right -> left
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "v.nii.gz")
    loaded = read_volume(tmp_path / "v.nii.gz")
    assert loaded.spacing == (2.0, 3.0, 4.0)
    np.testing.assert_allclose(loaded.array[0], data[::-1])
    as_stored = read_volume(tmp_path / "v.nii.gz", orientation=None)
    np.testing.assert_allclose(as_stored.array[0], data)
    resampled = read_volume(tmp_path / "v.nii.gz", spacing=(4.0, 3.0, 4.0))
    # MONAI keeps the extent between voxel centres: (6 - 1) * 2 mm / 4 mm + 1 = 3.5 -> 4 voxels
    assert resampled.spacing == (4.0, 3.0, 4.0) and resampled.array.shape == (1, 4, 7, 8)


def test_nrrd_matches_the_written_array_and_spacing(tmp_path):
    data = np.random.default_rng(3).integers(0, 1000, (5, 6, 7)).astype(np.int16)
    header = {"space": "left-posterior-superior", "space directions": np.diag([0.5, 0.5, 1.5]),
              "space origin": np.zeros(3)}
    nrrd.write(str(tmp_path / "v.nrrd"), data, header)
    loaded = read_volume(tmp_path / "v.nrrd")
    assert loaded.spacing == (0.5, 0.5, 1.5)
    np.testing.assert_array_equal(loaded.array[0], data[::-1, ::-1])  # LPS -> RAS flips the first two axes


def test_dicom_series_is_sorted_by_position_and_rescaled_to_hu(tmp_path):
    uid = generate_uid()
    raw = [np.full((4, 5), v, np.int16) + np.arange(5, dtype=np.int16) for v in (1000, 1100, 1200)]
    for z, pixels, name in zip((0.0, 2.5, 5.0), raw, ("c.dcm", "a.dcm", "b.dcm")):  # names out of order
        write_ct_slice(tmp_path / name, pixels, z, uid)
    loaded = read_volume(tmp_path, orientation=None)
    assert loaded.array.shape == (1, 5, 4, 3)  # ITK order: columns (x), rows (y), slices (z)
    assert loaded.spacing == (0.7, 0.5, 2.5)
    for k, pixels in enumerate(raw):
        np.testing.assert_array_equal(loaded.array[0, :, :, k], pixels.T - 1024.0)


def test_2d_dicom_ct_window_in_hounsfield_units(tmp_path):
    raw = np.array([[0, 24, 1024], [1524, 2024, 3000]], np.int16)  # HU: -1024, -1000, 0, 500, 1000, 1976
    write_ct_slice(tmp_path / "ct.dcm", raw, 0.0, generate_uid())
    loaded = read_image(tmp_path / "ct.dcm")
    np.testing.assert_array_equal(loaded.array[0], pydicom.dcmread(tmp_path / "ct.dcm").pixel_array - 1024.0)
    image = prepare_image(loaded, tmp_path / "ct.dcm", None, "pad", window_range([-1000, 1000]), 1)
    np.testing.assert_array_equal(image[0], [[0, 0, 128], [191, 255, 255]])


def test_window_presets_and_bad_windows():
    assert window_range("lung") == (-1350.0, 150.0)
    assert window_range("abdomen") == (-160.0, 240.0)
    assert window_range(None) is None
    for bad in ("lungs", [100, -100], [1, 2, 3]):
        with pytest.raises(DataError, match="window"):
            window_range(bad)


def test_pad_keeps_aspect_and_masks_keep_their_labels():
    image = np.ones((1, 20, 40), np.float32)
    padded = fit_size(image, (32, 32), "pad")
    assert padded.shape == (1, 32, 32)
    np.testing.assert_allclose(padded[0, 8:24], 1.0, atol=1e-3)  # 16 rows of content, centred
    assert padded[0, :8].max() == 0 and padded[0, 24:].max() == 0
    assert fit_size(image, (32, 32), "stretch").min() > 0.99
    mask = np.zeros((1, 20, 40), np.float32)
    mask[0, 5:15, 10:30] = 2
    assert set(np.unique(fit_size(mask, (64, 64), "pad", mask=True))) == {0.0, 2.0}


def test_unreadable_files_are_named_with_their_reason(tmp_path):
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "ok.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "ok.png").read_bytes()[:60])
    (tmp_path / "noise.nii.gz").write_bytes(np.random.default_rng(0).bytes(500))
    with pytest.raises(UnreadableFile, match=r"cut\.png: cannot be read") as err:
        read_image(tmp_path / "cut.png")
    assert err.value.path.endswith("cut.png")
    with pytest.raises(UnreadableFile, match=r"noise\.nii\.gz: cannot be read"):
        read_volume(tmp_path / "noise.nii.gz")
    with pytest.raises(UnreadableFile, match="file not found"):
        read_image(tmp_path / "absent.png")
    with pytest.raises(UnreadableFile, match="not a 2D image"):
        read_image(tmp_path / "noise.nii.gz")


def test_palette_images_read_colours_but_colour_palette_masks_read_class_indices(tmp_path):
    indices = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    palette = Image.new("P", (3, 2))
    palette.putdata(indices.ravel().tolist())
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255])
    palette.save(tmp_path / "labels.png")
    colours = read_image(tmp_path / "labels.png").array
    assert colours.shape == (3, 2, 3) and colours[:, 0, 1].tolist() == [255, 0, 0]
    np.testing.assert_array_equal(read_image(tmp_path / "labels.png", mask=True).array[0], indices)
    grey = np.zeros((4, 5), np.uint8)
    grey[1:3] = 255
    Image.fromarray(grey).save(tmp_path / "mask.gif")  # PIL writes a 2-entry palette: stored indices are 0/1
    np.testing.assert_array_equal(read_image(tmp_path / "mask.gif", mask=True).array[0], grey)
