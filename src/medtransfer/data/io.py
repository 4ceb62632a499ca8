"""Read one medical image file into a float array with its spacing, and turn it into the uint8 layout of `Split`.

Reading goes through MONAI's readers (PIL for PNG/JPEG/TIFF/GIF/BMP, nibabel for NIfTI, pynrrd for NRRD, ITK for
MetaImage and every DICOM: single files, multi-frame files and series folders, RLE and JPEG 2000 included, because
ITK/GDCM derives spacing and orientation of enhanced multi-frame DICOM that MONAI's PydicomReader leaves at identity).
Volumes are re-oriented (``orientation``, default RAS) and optionally resampled (``spacing``) with MONAI transforms,
so files written in different scanner conventions line up voxel for voxel.

Intensities become uint8 in three explicit ways (``window``):

- ``None`` (default): 8-bit sources (PNG, JPEG, ...) keep their values; anything else (16-bit PNG, DICOM, NIfTI ...)
  is scaled per image between its 0.5th and 99.5th percentiles, the usual choice for MR whose units are arbitrary.
- ``[lo, hi]``: a fixed window in stored units (Hounsfield units for CT, after DICOM rescale slope/intercept),
  clipped and scaled to 0..255, so the same tissue gets the same grey value in every scan.
- a preset name for CT (`WINDOWS`): the radiological level/width pairs, e.g. ``lung`` = L -600 / W 1500.

Every failure becomes an `UnreadableFile` naming the file and the reason, so a scan can list all bad files at once.
"""

from __future__ import annotations

import functools
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from medtransfer.errors import DataError, allowed

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".bmp")
DICOM_SUFFIXES = (".dcm", ".dicom")
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".npy", ".npz")
ARRAY_SUFFIXES = (".npy", ".npz")
ASPECTS = ("pad", "stretch")
PERCENTILES = (0.5, 99.5)
# CT windows as (level, width) in HU; [-1000, 1000] is the Models Genesis range (Zhou et al. 2021).
WINDOWS = {
    "lung": (-600, 1500),
    "mediastinum": (50, 350),
    "abdomen": (40, 400),
    "liver": (60, 160),
    "bone": (400, 1800),
    "brain": (40, 80),
    "ct": (0, 2000),
}


# Third-party lines that say nothing about the user's files, yet came once per image: MONAI's LoadImage builds every
# registered reader each time, and its nvImageCodec DICOM reader then logs and warns that the optional GPU decoder is
# absent (ITK and pydicom read those files anyway); ITK's SWIG bindings warn on import. Everything else passes.
_NOISE_LOGS = {"monai.data.nvimgcodec_pydicom_plugin": ("nvImageCodec is not available",)}
_NOISE_WARNINGS = ((UserWarning, "NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register"),
                   (DeprecationWarning, "builtin type (SwigPy|swigvarlink)"))


class _DropMessages(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


@functools.cache
def _quiet_reader_logs() -> None:
    """Filter `_NOISE_LOGS` at their loggers, once per process; other messages of those loggers still show."""
    for name, prefixes in _NOISE_LOGS.items():
        logging.getLogger(name).addFilter(_DropMessages(prefixes))


class UnreadableFile(DataError):
    """A file that cannot be used, with the reason kept apart so a scan can tabulate (path, reason) pairs."""

    def __init__(self, path: str | Path, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


@dataclass(frozen=True)
class Loaded:
    """A read image: float32 (C, *spatial), voxel spacing per spatial axis, and the source's integer-ness."""

    array: np.ndarray
    spacing: tuple[float, ...]
    eight_bit: bool = False


def suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def is_volume_path(path: Path) -> bool:
    """A DICOM series is a folder; single DICOM files count as volumes only when read by `read_volume`."""
    return path.is_dir() or suffix(path) in VOLUME_SUFFIXES


def window_range(window) -> tuple[float, float] | None:
    """Validate a ``window`` option and return (lo, hi) in stored units, or None for the per-image default."""
    if window is None:
        return None
    if isinstance(window, str):
        if window not in WINDOWS:
            raise DataError(f"window={window!r} is unknown; allowed: {allowed(WINDOWS)} or [lo, hi]")
        level, width = WINDOWS[window]
        return level - width / 2, level + width / 2
    if (isinstance(window, Sequence) and len(window) == 2 and all(isinstance(v, (int, float)) for v in window)
            and window[0] < window[1]):
        return float(window[0]), float(window[1])
    raise DataError(f"window={window!r}; allowed: null, [lo, hi] with lo < hi, or one of {allowed(WINDOWS)}")


def _load(path: Path, reader, channel_first: bool = True):
    from monai.transforms import LoadImage

    if not path.exists():
        raise UnreadableFile(path, "file not found")
    _quiet_reader_logs()
    try:
        with warnings.catch_warnings():  # scoped: the user's own warning filters stay as they were
            for category, message in _NOISE_WARNINGS:
                warnings.filterwarnings("ignore", message=message, category=category)
            return LoadImage(reader=reader, image_only=True, ensure_channel_first=channel_first)(str(path))
    except Exception as e:  # readers raise anything on corrupt bytes: zlib.error, struct.error, itk RuntimeError ...
        message = str(e).strip().splitlines()[-1][:300] if str(e).strip() else ""
        raise UnreadableFile(path, f"cannot be read ({type(e).__name__}: {message})") from None


def palette_converter(mask: bool):
    """Palette images (GIF, some PNG) store indices into a colour table, and writers reorder tables freely: read a
    grey palette as its grey values, a colour palette as RGB — except for masks, whose colour-palette indices are
    the class indices (VOC-style label PNGs)."""

    def convert(image):
        if image.mode not in ("P", "PA"):
            return image
        rgb = image.convert("RGB")
        colours = np.asarray(rgb)
        if (colours[..., 0] == colours[..., 1]).all() and (colours[..., 1] == colours[..., 2]).all():
            return rgb.convert("L")
        return image.convert("P") if mask else rgb

    return convert


def read_image(path: str | Path, mask: bool = False) -> Loaded:
    """One 2D image as (C, H, W) in row/column order: PNG/JPEG/TIFF/GIF/BMP, or a single-frame DICOM (X-ray)."""
    from monai.data import ITKReader, PILReader

    path = Path(path)
    kind = suffix(path)
    if not path.exists():
        raise UnreadableFile(path, "file not found")
    if kind in IMAGE_SUFFIXES:
        image = _load(path, PILReader(converter=palette_converter(mask), reverse_indexing=False))
        eight_bit = _pil_is_eight_bit(path)
        spacing = (1.0, 1.0)
    elif kind in DICOM_SUFFIXES:
        # reverse_indexing gives numpy order (frames, rows, columns); ITK already inverts MONOCHROME1.
        image = _load(path, ITKReader(reverse_indexing=True), channel_first=False)
        if image.ndim != 3 or image.shape[0] != 1:
            raise UnreadableFile(path, f"is a DICOM volume of shape {tuple(image.shape)}; allowed here: a single-frame "
                                       "2D DICOM (use a volume dataset for multi-frame files and series)")
        spacing = tuple(float(s) for s in np.asarray(image.meta.get("spacing", (1.0, 1.0, 1.0)))[:2])
        eight_bit = False
    else:
        raise UnreadableFile(path, f"suffix {kind or '(none)'} is not a 2D image; allowed: "
                                   f"{allowed(IMAGE_SUFFIXES + DICOM_SUFFIXES)}")
    return _checked(path, image, spacing, eight_bit, 2)


def read_volume(path: str | Path, orientation: str | None = "RAS", spacing: Sequence[float] | None = None,
                mask: bool = False, npz_key: str | None = None) -> Loaded:
    """One volume as (C, *spatial) with spatial axes in ``orientation``; ``spacing`` resamples (nearest for masks).

    NIfTI via nibabel, NRRD via pynrrd, MetaImage and DICOM (a series folder or a multi-frame file) via ITK, and
    numpy arrays (``.npy``, or ``.npz`` with ``npz_key``), which carry no geometry: 1 mm voxels, axes as stored.
    """
    from monai.data import MetaTensor
    from monai.transforms import Orientation, Spacing

    path = Path(path)
    kind = suffix(path)
    if not path.exists():
        raise UnreadableFile(path, "file not found")
    if path.is_dir() or kind in DICOM_SUFFIXES or kind in (".mha", ".mhd"):
        reader = "ITKReader"
    elif kind in (".nii", ".nii.gz"):
        reader = "NibabelReader"
    elif kind in (".nrrd", ".nhdr"):
        reader = "NrrdReader"
    elif kind not in ARRAY_SUFFIXES:
        raise UnreadableFile(path, f"suffix {kind or '(none)'} is not a volume; allowed: a DICOM series folder or "
                                   f"{allowed(VOLUME_SUFFIXES + DICOM_SUFFIXES)}")
    image = MetaTensor(read_array(path, npz_key)) if kind in ARRAY_SUFFIXES else _load(path, reader)
    if image.ndim != 4:
        raise UnreadableFile(path, f"has {image.ndim - 1} spatial dimensions (shape {tuple(image.shape[1:])}); "
                                   "allowed: a 3D volume")
    try:
        if orientation is not None and kind not in ARRAY_SUFFIXES:
            image = Orientation(axcodes=orientation, labels=None)(image)  # labels from the image's space
        if spacing is not None:
            image = Spacing(pixdim=tuple(spacing), mode="nearest" if mask else "bilinear")(image)
    except (ValueError, RuntimeError) as e:
        raise UnreadableFile(path, f"cannot be re-oriented/resampled ({e})") from None
    voxel = tuple(round(float(s), 6) for s in torch.linalg.norm(image.affine[:3, :3].double(), dim=0))
    return _checked(path, image, voxel, False, 3)


def read_array(path: Path, npz_key: str | None) -> torch.Tensor:
    """A (D, H, W) or (C, D, H, W) numeric array from ``.npy``/``.npz`` as float32 (C, D, H, W); never unpickles."""
    try:
        stored = np.load(path, allow_pickle=False)
        if isinstance(stored, np.lib.npyio.NpzFile):
            with stored:
                if npz_key is None and len(stored.files) == 1:
                    npz_key = stored.files[0]
                if npz_key not in stored.files:
                    raise UnreadableFile(path, f"npz_key={npz_key!r} names no array in it; allowed: "
                                               f"{allowed(stored.files)}")
                stored = stored[npz_key]
    except UnreadableFile:
        raise
    except Exception as e:  # corrupt bytes: ValueError, EOFError, zipfile.BadZipFile ...
        raise UnreadableFile(path, f"cannot be read ({type(e).__name__}: {str(e)[:300]})") from None
    if stored.dtype.kind not in "biuf" or stored.ndim not in (3, 4):
        raise UnreadableFile(path, f"holds a {stored.dtype} array of shape {stored.shape}; allowed: a numeric "
                                   "(D, H, W) or (C, D, H, W) array")
    return torch.from_numpy(np.asarray(stored if stored.ndim == 4 else stored[None], np.float32))


def read_any(path: str | Path, orientation: str | None = "RAS", spacing: Sequence[float] | None = None,
             mask: bool = False, npz_key: str | None = None) -> Loaded:
    path = Path(path)
    if is_volume_path(path):
        return read_volume(path, orientation, spacing, mask, npz_key)
    return read_image(path, mask)


def _pil_is_eight_bit(path: Path) -> bool:
    from PIL import Image

    with Image.open(path) as im:
        return im.mode in ("1", "L", "P", "RGB", "RGBA", "LA")


def _checked(path: Path, image, spacing, eight_bit: bool, spatial_dims: int) -> Loaded:
    array = np.asarray(image, dtype=np.float32)
    if array.ndim != spatial_dims + 1:
        raise UnreadableFile(path, f"has shape {array.shape}; allowed: a {spatial_dims}D image")
    if min(array.shape[1:]) < 1:
        raise UnreadableFile(path, f"is empty (shape {array.shape[1:]})")
    if not np.isfinite(array).all():
        raise UnreadableFile(path, f"contains {int((~np.isfinite(array)).sum())} NaN/infinite values")
    return Loaded(np.ascontiguousarray(array), tuple(spacing), eight_bit)


def to_unit255(loaded: Loaded, window) -> np.ndarray:
    """Intensities -> float in [0, 255] by the ``window`` rule of the module docstring (window already validated)."""
    array = loaded.array
    if window is not None:
        lo, hi = window
    elif loaded.eight_bit:
        return array
    else:
        lo, hi = np.percentile(array, PERCENTILES)
    if hi <= lo:
        return np.zeros_like(array)  # a constant image stays constant rather than dividing by zero
    return np.clip((array - lo) / (hi - lo), 0.0, 1.0) * 255.0


def match_channels(array: np.ndarray, channels: int | None, path: Path) -> np.ndarray:
    """Convert grey <-> RGB (luminance, or repeat) and drop alpha when ``channels`` asks; refuse anything else."""
    have = array.shape[0]
    if channels is None or have == channels:
        return array
    if channels == 1 and have in (3, 4):
        weights = np.array([0.299, 0.587, 0.114], np.float32).reshape((3,) + (1,) * (array.ndim - 1))
        return (array[:3] * weights).sum(axis=0, keepdims=True)
    if channels == 3 and have in (1, 2, 4):
        return array[:3] if have == 4 else np.repeat(array[:1], 3, axis=0)
    raise UnreadableFile(path, f"has {have} channels; allowed: {channels} (the dataset's `channels`)")


def fit_size(array: np.ndarray, size: Sequence[int] | None, aspect: str, mask: bool = False) -> np.ndarray:
    """Resize (C, *spatial) to ``size``: ``stretch`` scales each axis; ``pad`` keeps the aspect ratio, scales the
    image to fit and pads it centred with zeros (background in masks, outside the field of view in FOVs)."""
    from monai.transforms import Resize, SpatialPad

    if size is None or tuple(array.shape[1:]) == tuple(size):
        return array
    mode = "nearest" if mask else ("bilinear" if array.ndim == 3 else "trilinear")
    anti_alias = not mask
    if aspect == "stretch":
        target = tuple(size)
    else:
        scale = min(s / a for s, a in zip(size, array.shape[1:]))
        target = tuple(max(1, min(s, round(a * scale))) for s, a in zip(size, array.shape[1:]))
    out = Resize(target, mode=mode, anti_aliasing=anti_alias and any(t < a for t, a in zip(target, array.shape[1:])),
                 **({} if mask else {"align_corners": False}))(torch.from_numpy(array))
    if aspect == "pad":
        out = SpatialPad(tuple(size), mode="constant")(out)
    return np.asarray(out, dtype=np.float32)


def to_uint8(array: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(array), 0, 255).astype(np.uint8)


def prepare_image(loaded: Loaded, path: Path, size, aspect: str, window, channels: int | None) -> np.ndarray:
    """The per-image pipeline: intensity rule, channel conversion, resize, uint8."""
    array = match_channels(to_unit255(loaded, window), channels, path)
    return to_uint8(fit_size(array, size, aspect))


def prepare_mask(loaded: Loaded, path: Path, size, aspect: str) -> np.ndarray:
    """A label map (1, *spatial) -> integer mask (*spatial), resized with nearest neighbours."""
    array = loaded.array
    if array.shape[0] != 1:
        if not all(np.array_equal(array[0], c) for c in array[1:]):
            raise UnreadableFile(path, f"mask has {array.shape[0]} different channels; allowed: one label channel")
        array = array[:1]
    if not np.array_equal(array, np.round(array)):
        raise UnreadableFile(path, "mask contains non-integer values; allowed: integer labels")
    return np.rint(fit_size(array, size, aspect, mask=True)[0]).astype(np.int64)


def check_size_option(size, spatial_dims: int, where: str) -> tuple[int, ...] | None:
    """``size``: an int (square/cube) or one int per spatial axis; None keeps native sizes (which must agree)."""
    if size is None:
        return None
    sizes = (size,) * spatial_dims if isinstance(size, int) and not isinstance(size, bool) else size
    if (not isinstance(sizes, Sequence) or len(sizes) != spatial_dims
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in sizes)):
        raise DataError(f"{where}: size={size!r}; allowed: a positive integer or {spatial_dims} positive integers")
    return tuple(sizes)


def check_aspect(aspect: str, where: str) -> str:
    if aspect not in ASPECTS:
        raise DataError(f"{where}: aspect={aspect!r}; allowed: {allowed(ASPECTS)}")
    return aspect
