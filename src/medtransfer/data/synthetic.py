"""A built-in synthetic "scan" dataset, 2D or 3D, so demos and tests run anywhere without downloads.

Every image is a body outline holding a textured organ crossed by a vessel, under random contrast and noise; the
label is the kind of lesion inside the organ: none (healthy), a solid bright nodule, or a cyst (bright rim, dark
centre) of similar size. Lesions are a few pixels across and clearly contrasted, so a small CNN learns the label and
a self-supervised model trained with crops, flips and intensity changes has a real structure to encode; the
background varies at random so that nothing but the lesion predicts the label.
"""

from __future__ import annotations

from numbers import Integral

import numpy as np

from medtransfer.data.base import ImageDataset, Split
from medtransfer.errors import DataError

CLASS_NAMES = ("healthy", "nodule", "cyst")
_CHUNK_POINTS = 2**21  # pixels rendered at once: bounds memory for 3D while keeping the arithmetic vectorised


def make_synthetic(
    spatial_dims: int = 2,
    size: int = 32,
    n_train: int = 1200,
    n_val: int = 300,
    n_test: int = 600,
    seed: int = 0,
    channels: int = 1,
) -> ImageDataset:
    """Generate the dataset; the same arguments give bit-identical arrays, a different seed gives different ones.

    Each split comes from its own stream spawned from `seed`, so changing `n_train` leaves val and test unchanged.
    """
    if spatial_dims not in (2, 3):
        raise DataError(f"synthetic: spatial_dims={spatial_dims!r}; allowed: 2, 3")
    minimum = {"size": 8, "n_train": len(CLASS_NAMES), "n_val": 1, "n_test": 1, "seed": 0, "channels": 1}
    values = {"size": size, "n_train": n_train, "n_val": n_val, "n_test": n_test, "seed": seed, "channels": channels}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum[key]:
            raise DataError(f"synthetic: {key}={value!r}; allowed: an integer >= {minimum[key]}")
    streams = np.random.SeedSequence(seed).spawn(3)
    train, val, test = (
        _make_split(np.random.default_rng(s), n, spatial_dims, size, channels)
        for s, n in zip(streams, (n_train, n_val, n_test))
    )
    return ImageDataset(
        name=f"synthetic{spatial_dims}d",
        task="multiclass",
        class_names=CLASS_NAMES,
        spatial_dims=spatial_dims,
        train=train,
        val=val,
        test=test,
        description=(
            f"Synthetic {spatial_dims}D scans ({size}px, {channels} channel(s), seed {seed}): a textured organ "
            "inside a body outline; label 0 healthy = no lesion, 1 nodule = solid bright blob, 2 cyst = bright rim "
            "with dark centre, always inside the organ."
        ),
    ).validate()


def synthetic2d(size: int = 32, n_train: int = 1200, n_val: int = 300, n_test: int = 600, seed: int = 0,
                channels: int = 1) -> ImageDataset:
    """2D synthetic scans; explicit parameters so `load_dataset` can name the options it accepts."""
    return make_synthetic(2, size, n_train, n_val, n_test, seed, channels)


def synthetic3d(size: int = 24, n_train: int = 600, n_val: int = 150, n_test: int = 300, seed: int = 0,
                channels: int = 1) -> ImageDataset:
    """3D synthetic volumes, smaller by default because CPU cost grows with the cube of the size."""
    return make_synthetic(3, size, n_train, n_val, n_test, seed, channels)


def _make_split(rng: np.random.Generator, n: int, dims: int, size: int, channels: int) -> Split:
    # Shuffled near-equal classes: balanced, yet the order carries no information.
    labels = rng.permutation(np.arange(n) % len(CLASS_NAMES)).astype(np.int64)
    params = _draw_params(rng, labels, dims, channels)
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1  # pixel centres in [-1, 1]
    grid = np.stack(np.meshgrid(*([axis] * dims), indexing="ij"), -1).reshape(-1, dims)  # (P, dims)
    images = np.empty((n, channels) + (size,) * dims, np.uint8)
    chunk = max(1, _CHUNK_POINTS // len(grid))
    for start in range(0, n, chunk):
        part = {k: v[start:start + chunk] for k, v in params.items()}
        images[start:start + chunk] = _render(rng, grid, part, size).reshape((-1, channels) + (size,) * dims)
    return Split(images=images, labels=labels)


def _draw_params(rng: np.random.Generator, labels: np.ndarray, dims: int, channels: int) -> dict[str, np.ndarray]:
    """All per-image randomness except pixel noise, drawn up front so chunking cannot change the result."""
    n = len(labels)
    u = lambda lo, hi, *shape: rng.uniform(lo, hi, (n, *shape)).astype(np.float32)  # noqa: E731
    organ_rot = _random_rotations(rng, n, dims)
    organ_axes = u(0.45, 0.65, dims)
    organ_centre = u(-0.12, 0.12, dims)
    # Lesion centre: a random direction in the organ's own frame, at most 45 % of the way to its edge, so that
    # even the largest lesion in the smallest organ stays (almost) inside it.
    direction = rng.normal(size=(n, dims)).astype(np.float32)
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    local = direction * u(0.0, 0.45, 1) * organ_axes
    wave_dir = rng.normal(size=(n, 3, dims)).astype(np.float32)
    vessel_dir = _random_rotations(rng, n, dims)  # rows 0 and 1: vessel axis and the direction it bends in
    return {
        "label": labels,
        "body_axes": u(0.82, 0.95, dims),
        "body_centre": u(-0.04, 0.04, dims),
        "organ_rot": organ_rot,
        "organ_axes": organ_axes,
        "organ_centre": organ_centre,
        "organ_level": u(0.38, 0.52),
        # Low-frequency texture: three plane waves of 1-3 cycles across the image.
        "wave_k": wave_dir / np.linalg.norm(wave_dir, axis=2, keepdims=True) * u(np.pi, 3 * np.pi, 3, 1),
        "wave_phase": u(0, 2 * np.pi, 3),
        "wave_amp": u(0.02, 0.06, 3),
        "vessel_dir": vessel_dir,
        "vessel_offset": u(-0.3, 0.3, dims),
        "vessel_bend": u(0.1, 0.3),
        "vessel_freq": u(2.0, 4.0),
        "vessel_phase": u(0, 2 * np.pi),
        "vessel_level": u(0.15, 0.3),
        "lesion_centre": organ_centre + np.einsum("nij,nj->ni", organ_rot, local),
        "lesion_radius": u(0.16, 0.26),  # 2.5-4 px at 32 px: visible after a random crop, not a single pixel
        "lesion_level": u(0.3, 0.45),
        "gain": u(0.7, 1.15),
        "offset": u(-0.08, 0.08),
        "noise": u(0.02, 0.08),
        # A reddish tint falling off across channels (one channel: a mild extra gain).
        "tint": np.clip(np.linspace(1.0, 0.6, channels, dtype=np.float32) + u(-0.1, 0.1, channels), 0.3, 1.0),
    }


def _random_rotations(rng: np.random.Generator, n: int, dims: int) -> np.ndarray:
    """Random orthogonal matrices (QR of Gaussian matrices, sign-fixed so the distribution is uniform)."""
    q, r = np.linalg.qr(rng.normal(size=(n, dims, dims)))
    return (q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]).astype(np.float32)


def _soft_inside(q2: np.ndarray, sharpness) -> np.ndarray:
    """1 inside a shape whose squared normalised radius q2 < 1, 0 outside, with an edge about 1/sharpness wide."""
    return 1.0 / (1.0 + np.exp(np.clip((np.sqrt(q2) - 1.0) * sharpness, -30, 30)))


def _frame(x: list[np.ndarray], origin: np.ndarray, rot: np.ndarray) -> list[np.ndarray]:
    """Coordinates relative to `origin` along the columns of `rot`, one (n, P) array per axis.

    Looping over the 2-3 axes on full (n, P) arrays is several times faster than reducing a trailing axis of size 3.
    """
    shifted = [xd - origin[:, d, None] for d, xd in enumerate(x)]
    return [sum(sd * rot[:, d, e, None] for d, sd in enumerate(shifted)) for e in range(len(x))]


def _render(rng: np.random.Generator, grid: np.ndarray, p: dict[str, np.ndarray], size: int) -> np.ndarray:
    """Float rendering of one chunk -> uint8 array (n * channels, P)."""
    x = [grid[None, :, d] for d in range(grid.shape[1])]  # one (1, P) array per axis
    px = size / 2.0  # pixels per unit of the [-1, 1] grid: keeps edge widths about one pixel at any size
    col = lambda key: p[key][:, None]  # noqa: E731  per-image scalar, broadcast over pixels
    body_q2 = sum(((xd - p["body_centre"][:, d, None]) / p["body_axes"][:, d, None]) ** 2 for d, xd in enumerate(x))
    body = _soft_inside(body_q2, 4 * px)
    img = 0.2 * body + 0.12 * np.exp(-(((np.sqrt(body_q2) - 1) * px) ** 2))  # soft tissue and a brighter skin line

    rel = _frame(x, p["organ_centre"], p["organ_rot"])
    organ = _soft_inside(sum((r / p["organ_axes"][:, e, None]) ** 2 for e, r in enumerate(rel)), 2 * px)
    k, phase, amp = p["wave_k"], p["wave_phase"], p["wave_amp"]
    texture = sum(
        amp[:, w, None] * np.cos(sum(xd * k[:, w, d, None] for d, xd in enumerate(x)) + phase[:, w, None])
        for w in range(k.shape[1])
    )
    img = img + organ * (col("organ_level") - 0.2 + texture)

    along, across, *depth = _frame(x, p["vessel_offset"], p["vessel_dir"].transpose(0, 2, 1))
    bend = col("vessel_bend") * np.sin(col("vessel_freq") * along + col("vessel_phase"))
    dist2 = (across - bend) ** 2 + sum(dd**2 for dd in depth)
    img = img + col("vessel_level") * np.exp(-dist2 * (px / 1.2) ** 2) * body

    radius, level, label = col("lesion_radius"), col("lesion_level"), col("label")
    d2 = sum((xd - p["lesion_centre"][:, d, None]) ** 2 for d, xd in enumerate(x)) / radius**2  # 1 on the edge
    nodule = level * _soft_inside(d2, px * radius)
    fluid = _soft_inside(d2 / 0.36, 0.6 * px * radius)
    rim = level * np.exp(-(((np.sqrt(d2) - 0.85) * px * radius / 1.5) ** 2))
    img = img + (label == 1) * nodule + (label == 2) * (rim - fluid * (img - 0.08))

    img = img * col("gain") + col("offset")
    img = img[:, None, :] * p["tint"][:, :, None]  # (n, channels, P)
    img = img + rng.standard_normal(img.shape, dtype=np.float32) * p["noise"][:, None, None]
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8).reshape(-1, img.shape[-1])
