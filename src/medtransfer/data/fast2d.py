"""One file -> the uint8 (C, *spatial) image of the dataset contract, with a fast path for 8- and 16-bit 2D images.

Through MONAI (`io.read_image` + `io.prepare_image`) an 8-bit PNG becomes a full-size float32 array, is smoothed
(anti-aliasing) and resized in float, and is opened a second time for its bit depth: ~20x the cost of the decode
itself for a 1024² X-ray. 8-bit images (L, LA, RGB, RGBA and grey/colour palettes) therefore never leave 8 bits
here: PIL decodes, each band is resized with PIL's bilinear filter, whose support widens with the scale factor
(so downscaling is anti-aliased), after a box `reduce` by the largest integer factor that keeps at least twice the
target size (``reducing_gap``), and channels are matched on the small result. 16-bit grey images are resized in
16 bits the same way and then scaled between the full-size image's 0.5th and 99.5th percentiles (from its
histogram). Everything else — volumes, DICOM, 32-bit and float images, bilevel images, fixed intensity windows —
takes the MONAI path unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from medtransfer.data.io import (IMAGE_SUFFIXES, PERCENTILES, UnreadableFile, is_volume_path, match_channels,
                                 palette_converter, prepare_image, read_any, read_volume, suffix, to_uint8)

EIGHT_BIT_MODES = ("L", "LA", "RGB", "RGBA")
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L")


def decode_image(path: str | Path, orientation: str | None, spacing: Sequence[float] | None,
                 size: tuple[int, ...] | None, aspect: str, window, channels: int | None, npz_key: str | None = None,
                 volume: bool = False) -> np.ndarray:
    """The uint8 image of one file at ``size`` (see `io.prepare_image` for the rules; ``window`` validated);
    ``volume`` reads DICOM files as multi-frame volumes rather than 2D images."""
    path = Path(path)
    if volume:
        loaded = read_volume(path, orientation, spacing, npz_key=npz_key)
    else:
        if window is None and not is_volume_path(path) and suffix(path) in IMAGE_SUFFIXES:
            fast = _decode_pil(path, size, aspect, channels)
            if fast is not None:
                return fast
        loaded = read_any(path, orientation, spacing, npz_key=npz_key)
    return prepare_image(loaded, path, size, aspect, window, channels)


def image_arrays(path: Path, **options) -> dict[str, np.ndarray]:
    """`decode_image` as the named arrays a dataset decode expects (module level, so worker processes can run it)."""
    return {"image": decode_image(path, **options)}


def fitted_size(native: Sequence[int], size: Sequence[int] | None, aspect: str) -> tuple[int, ...]:
    """The size the image is scaled to before padding (the rule of `io.fit_size`)."""
    if size is None:
        return tuple(native)
    if aspect == "stretch":
        return tuple(size)
    scale = min(s / a for s, a in zip(size, native))
    return tuple(max(1, min(s, round(a * scale))) for s, a in zip(size, native))


def _decode_pil(path: Path, size, aspect: str, channels: int | None) -> np.ndarray | None:
    """PIL decode + resize (8 bits kept; 16 bits scaled between percentiles after resizing) + channel match +
    centred zero padding; None for modes this path does not cover."""
    from PIL import Image

    if not path.exists():
        raise UnreadableFile(path, "file not found")
    try:
        with Image.open(path) as opened:
            image = palette_converter(False)(opened)
            if image.mode not in EIGHT_BIT_MODES + SIXTEEN_BIT_MODES:
                return None
            image.load()
            native = (image.height, image.width)
            target = fitted_size(native, size, aspect)
            limits = percentiles_uint16(np.asarray(image)) if image.mode in SIXTEEN_BIT_MODES else None
            bands = image.split()  # per band: PIL would premultiply alpha when resizing LA/RGBA as a whole
            if target != native:
                bands = [b.resize(target[::-1], Image.Resampling.BILINEAR, reducing_gap=2.0) for b in bands]
            array = np.stack([np.asarray(b) for b in bands])
    except Exception as e:  # decoders raise anything on corrupt bytes: OSError, SyntaxError, zlib.error ...
        message = str(e).strip().splitlines()[-1][:300] if str(e).strip() else ""
        raise UnreadableFile(path, f"cannot be read ({type(e).__name__}: {message})") from None
    if limits is not None:
        lo, hi = limits
        scaled = np.zeros(array.shape, np.float32) if hi <= lo else np.clip((array - lo) / (hi - lo), 0, 1) * 255
        array = to_uint8(scaled)
    if channels is not None and array.shape[0] != channels:
        array = to_uint8(match_channels(array.astype(np.float32), channels, path))
    if size is None or tuple(array.shape[1:]) == tuple(size):
        return np.ascontiguousarray(array)
    out = np.zeros((array.shape[0], *size), np.uint8)
    offsets = [(s - t) // 2 for s, t in zip(size, array.shape[1:])]  # MONAI SpatialPad's symmetric split
    out[(slice(None), *(slice(o, o + t) for o, t in zip(offsets, array.shape[1:])))] = array
    return out


def percentiles_uint16(array: np.ndarray) -> tuple[float, float]:
    """``np.percentile(array, PERCENTILES)`` of a 16-bit image from its histogram: the same order statistics and
    linear interpolation, without sorting a float copy of the full-size image."""
    cumulative = np.cumsum(np.bincount(array.astype(np.uint16, copy=False).ravel(), minlength=1 << 16))
    last = int(cumulative[-1]) - 1
    values = []
    for q in PERCENTILES:
        position = q / 100 * last
        below = int(np.floor(position))
        lower, upper = np.searchsorted(cumulative, [below, min(below + 1, last)], side="right")
        values.append(float(lower + (upper - lower) * (position - below)))
    return values[0], values[1]
