"""Every real file in ../shared/data/formats read through medtransfer, checked against an independent reader
(nibabel, pynrrd, pydicom, PIL, or the raw MetaImage bytes) for shape, spacing and intensities."""

import re
import zlib
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pydicom
import pytest
from PIL import Image

from medtransfer.data import load_dataset
from medtransfer.data.io import prepare_image, prepare_mask, read_image, read_volume, window_range

FORMATS = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "formats").resolve()
pytestmark = pytest.mark.realdata
EXPECTED_FILES = {
    "nifti/FLAIR.nii.gz", "nifti/lesion.nii.gz", "nifti/anatomical.nii", "other/FLAIR.nrrd", "other/mha.mha",
    "dicom/VS-SEG-001/1-001.dcm", "dicom/VS-SEG-001/1-002.dcm", "dicom/VS-SEG-001/1-003.dcm", "dicom/enh.dcm",
    "dicom/CT_small.dcm", "dicom/MR_small.dcm", "dicom/MR_small_RLE.dcm", "dicom/JPEG2000.dcm",
    "xray/00000001_000.png", "xray/00027426_000.png",
}


@pytest.fixture(scope="module")
def formats():
    if not FORMATS.is_dir():
        pytest.skip(f"{FORMATS} is absent: real-data tests need ../shared/data beside the clone")
    return FORMATS


def test_the_folder_holds_exactly_the_files_checked_here(formats):
    found = {p.relative_to(formats).as_posix() for p in formats.rglob("*") if p.is_file()
             and "licenses" not in p.parts and p.name != "README.md"}
    assert found == EXPECTED_FILES  # a new file must get a check below


def test_nifti_flair_lesion_and_anatomical_match_nibabel_canonical(formats):
    flair = nib.load(formats / "nifti/FLAIR.nii.gz")
    loaded = read_volume(formats / "nifti/FLAIR.nii.gz")
    assert loaded.array.shape == (1, 124, 160, 140) and np.allclose(loaded.spacing, 1.0, atol=1e-6)
    np.testing.assert_array_equal(loaded.array[0], nib.as_closest_canonical(flair).get_fdata())
    lesion = read_volume(formats / "nifti/lesion.nii.gz", mask=True)
    mask = prepare_mask(lesion, formats / "nifti/lesion.nii.gz", None, "pad")
    assert mask.shape == (124, 160, 140) and set(np.unique(mask)) == {0, 1, 2, 3}
    np.testing.assert_array_equal(mask, nib.as_closest_canonical(nib.load(formats / "nifti/lesion.nii.gz")).get_fdata())
    anatomical = nib.load(formats / "nifti/anatomical.nii")
    assert nib.aff2axcodes(anatomical.affine) == ("L", "A", "S")  # stored left-to-right reversed
    loaded = read_volume(formats / "nifti/anatomical.nii")
    assert loaded.array.shape == (1, 33, 41, 25) and loaded.spacing == (2.0, 2.0, 2.0)
    np.testing.assert_array_equal(loaded.array[0], anatomical.get_fdata()[::-1])


def test_nrrd_flair_equals_the_nifti_flair_and_pynrrd(formats):
    from_nrrd = read_volume(formats / "other/FLAIR.nrrd")
    from_nifti = read_volume(formats / "nifti/FLAIR.nii.gz")
    np.testing.assert_array_equal(from_nrrd.array, from_nifti.array)  # same scan, two formats, one RAS grid
    assert np.allclose(from_nrrd.spacing, from_nifti.spacing, atol=1e-6)
    data, header = nrrd.read(str(formats / "other/FLAIR.nrrd"))
    assert header["space"] == "left-posterior-superior"
    np.testing.assert_array_equal(read_volume(formats / "other/FLAIR.nrrd", orientation=None).array[0], data)


def test_metaimage_matches_its_raw_zlib_payload(formats):
    raw = (formats / "other/mha.mha").read_bytes()
    end = raw.index(b"ElementDataFile = LOCAL\n") + len(b"ElementDataFile = LOCAL\n")
    header = raw[:end].decode()
    dims = [int(v) for v in re.search(r"DimSize = (.*)", header).group(1).split()]
    spacing = [float(v) for v in re.search(r"ElementSpacing = (.*)", header).group(1).split()]
    voxels = np.frombuffer(zlib.decompress(raw[end:]), "<i2").reshape(dims[::-1]).transpose(2, 1, 0)
    loaded = read_volume(formats / "other/mha.mha", orientation=None)
    assert loaded.array.shape == (1, 64, 64, 37) and np.allclose(loaded.spacing, spacing)
    np.testing.assert_array_equal(loaded.array[0], voxels)
    assert np.allclose(read_volume(formats / "other/mha.mha").spacing, spacing)  # re-orienting keeps the spacing


def test_dicom_series_matches_pydicom_slices_sorted_by_position(formats):
    slices = sorted((pydicom.dcmread(p) for p in (formats / "dicom/VS-SEG-001").glob("*.dcm")),
                    key=lambda s: float(s.ImagePositionPatient[2]))
    loaded = read_volume(formats / "dicom/VS-SEG-001", orientation=None)
    gap = float(slices[1].ImagePositionPatient[2]) - float(slices[0].ImagePositionPatient[2])
    assert loaded.array.shape == (1, 512, 512, 3)
    assert np.allclose(loaded.spacing, [*map(float, slices[0].PixelSpacing), gap]) and gap == 1.5
    for k, ds in enumerate(slices):
        np.testing.assert_array_equal(loaded.array[0, :, :, k], ds.pixel_array.T)  # ITK: (column, row, slice)
    ras = read_volume(formats / "dicom/VS-SEG-001")
    np.testing.assert_array_equal(ras.array[0], loaded.array[0, ::-1, ::-1])  # LPS patient axes -> RAS


def test_enhanced_multiframe_dicom_has_per_frame_geometry(formats):
    ds = pydicom.dcmread(formats / "dicom/enh.dcm")
    measures = ds.PerFrameFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    loaded = read_volume(formats / "dicom/enh.dcm", orientation=None)
    assert loaded.array.shape == (1, 64, 64, 6)
    assert np.allclose(loaded.spacing, [*map(float, measures.PixelSpacing), float(measures.SpacingBetweenSlices)])
    for k in range(6):
        np.testing.assert_array_equal(loaded.array[0, :, :, k], ds.pixel_array[k].T)


def test_ct_small_is_in_hounsfield_units_and_windows_as_documented(formats):
    ds = pydicom.dcmread(formats / "dicom/CT_small.dcm")
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    loaded = read_image(formats / "dicom/CT_small.dcm")
    assert loaded.array.shape == (1, 128, 128) and loaded.spacing == (0.661468, 0.661468)
    np.testing.assert_array_equal(loaded.array[0], hu)
    assert hu.min() == -896 and hu.max() == 1167  # intercept -1024 applied: air-like to bone-like values
    image = prepare_image(loaded, formats / "dicom/CT_small.dcm", None, "pad", window_range("abdomen"), 1)
    np.testing.assert_array_equal(image[0], np.rint(np.clip((hu + 160) / 400, 0, 1) * 255))


@pytest.mark.parametrize("name", ["MR_small.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm"])
def test_2d_dicom_pixels_equal_pydicom_including_rle_and_jpeg2000(formats, name):
    ds = pydicom.dcmread(formats / "dicom" / name)
    loaded = read_image(formats / "dicom" / name)
    assert loaded.array.shape == (1, int(ds.Rows), int(ds.Columns))
    assert loaded.spacing == tuple(map(float, ds.PixelSpacing))
    np.testing.assert_array_equal(loaded.array[0], ds.pixel_array)
    if name == "MR_small_RLE.dcm":  # the RLE file is the uncompressed one, losslessly compressed
        np.testing.assert_array_equal(loaded.array, read_image(formats / "dicom/MR_small.dcm").array)


def test_xray_pngs_keep_their_8_bit_values(formats):
    data = load_dataset("image_folder", root=str(formats / "xray"), pattern="*.png", size=512)
    assert data.train.images.shape == (2, 1, 512, 512)
    for image, path in zip(data.train.images, sorted((formats / "xray").glob("*.png"))):
        np.testing.assert_array_equal(image[0], np.asarray(Image.open(path).convert("L")))
