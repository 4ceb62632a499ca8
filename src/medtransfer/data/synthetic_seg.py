"""Built-in synthetic segmentation sets (2D and 3D), so segmentation runs and tests need no download.

Each image is a smooth textured background crossed by thin, dark, curved "vessels" (1-3 px wide, like retinal
vessels) with a few bright "blobs" (nodule-like); the masks label them 1 (vessel) and 2 (blob). 2D images have a
circular field of view like a fundus photograph: outside it the image is dark, nothing is labelled and metrics do
not count. Thin curved structures are what resizing destroys and what sliding-window evaluation must keep.
"""

from __future__ import annotations

from numbers import Integral

import numpy as np
from scipy.ndimage import distance_transform_edt, gaussian_filter

from medtransfer.data.base import ImageDataset, Split
from medtransfer.errors import DataError

CLASS_NAMES = ("background", "vessel", "blob")


def make_synthetic_seg(spatial_dims: int, size: int, n_train: int, n_val: int, n_test: int, seed: int,
                       channels: int) -> ImageDataset:
    """Same arguments, bit-identical arrays; each split has its own seeded stream (n_train leaves val/test alone)."""
    minimum = {"size": 16, "n_train": 1, "n_val": 1, "n_test": 1, "seed": 0, "channels": 1}
    values = {"size": size, "n_train": n_train, "n_val": n_val, "n_test": n_test, "seed": seed, "channels": channels}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum[key]:
            raise DataError(f"synthetic_seg{spatial_dims}d: {key}={value!r}; allowed: an integer >= {minimum[key]}")
    streams = np.random.SeedSequence(seed).spawn(3)
    train, val, test = (_split(np.random.default_rng(s), n, spatial_dims, size, channels)
                        for s, n in zip(streams, (n_train, n_val, n_test)))
    return ImageDataset(
        name=f"synthetic_seg{spatial_dims}d", task="segmentation", class_names=CLASS_NAMES,
        spatial_dims=spatial_dims, train=train, val=val, test=test,
        description=(f"Synthetic {spatial_dims}D segmentation ({size}px, {channels} channel(s), seed {seed}): thin "
                     "dark curved vessels (1) and bright blobs (2) on a textured background"
                     + (", inside a circular field of view." if spatial_dims == 2 else ".")),
    ).validate()


def synthetic_seg2d(size: int = 64, n_train: int = 32, n_val: int = 8, n_test: int = 8, seed: int = 0,
                    channels: int = 1) -> ImageDataset:
    """2D images with a circular field of view (``Split.fov``)."""
    return make_synthetic_seg(2, size, n_train, n_val, n_test, seed, channels)


def synthetic_seg3d(size: int = 32, n_train: int = 16, n_val: int = 4, n_test: int = 4, seed: int = 0,
                    channels: int = 1) -> ImageDataset:
    """3D volumes (no field of view), small by default because CPU cost grows with the cube of the size."""
    return make_synthetic_seg(3, size, n_train, n_val, n_test, seed, channels)


def _split(rng: np.random.Generator, n: int, dims: int, size: int, channels: int) -> Split:
    grid = np.stack(np.meshgrid(*([np.arange(size, dtype=np.float32)] * dims), indexing="ij"), -1)
    centre = (size - 1) / 2
    fov = np.linalg.norm(grid - centre, axis=-1) <= 0.46 * size if dims == 2 else np.ones((size,) * dims, bool)
    images, masks = [], []
    for _ in range(n):
        image, mask = _scene(rng, grid, fov, size, dims)
        mask[~fov] = 0
        gain = rng.uniform(0.8, 1.2, channels)  # channels differ in contrast, as colour channels do
        stack = np.clip(image[None] * gain.reshape(-1, *([1] * dims)), 0, 1)
        stack = np.where(fov, stack, 0.02)
        stack = stack + rng.normal(0, 0.02, stack.shape)
        images.append(np.round(np.clip(stack, 0, 1) * 255).astype(np.uint8))
        masks.append(mask)
    return Split(np.stack(images), np.stack(masks).astype(np.int64), np.repeat(fov[None], n, 0) if dims == 2 else None)


def _scene(rng, grid, fov, size, dims):
    # texture varies on a larger scale than blobs and more gently, so that a bright patch of background is not a blob
    texture = gaussian_filter(rng.normal(size=(size,) * dims), sigma=size / 8)
    image = 0.5 + 0.08 * texture / (texture.std() + 1e-8)
    mask = np.zeros((size,) * dims, np.int64)
    inside = np.argwhere(fov)
    thin = (0.6, 1.6) if dims == 2 else (1.0, 2.0)  # a 1-voxel tube in a 32^3 volume would be a needle
    for _ in range(rng.integers(3, 6)):
        tube = _curve(rng, inside[rng.integers(len(inside))].astype(float), size, dims, rng.uniform(*thin))
        image[tube] -= rng.uniform(0.2, 0.3)
        mask[tube] = 1
    for _ in range(rng.integers(1, 3)):
        centre = inside[rng.integers(len(inside))]
        radii = rng.uniform(0.05, 0.11, dims) * size * (1.0 if dims == 2 else 1.5)
        blob = (((grid - centre) / radii) ** 2).sum(-1) <= 1
        image[blob] += rng.uniform(0.3, 0.4)
        mask[blob] = 2
    return image, mask


def _curve(rng, start, size, dims, radius) -> np.ndarray:
    """Voxels within ``radius`` of a smooth random walk (direction drifting slowly), i.e. a thin curved tube."""
    direction = rng.normal(size=dims)
    points = [start]
    for _ in range(int(rng.uniform(0.6, 1.4) * size * 2)):
        direction = direction / np.linalg.norm(direction) + rng.normal(0, 0.08, dims)
        points.append(points[-1] + 0.5 * direction / np.linalg.norm(direction))
    idx = np.round(np.array(points)).astype(int)
    idx = idx[((idx >= 0) & (idx < size)).all(1)]
    centre_line = np.zeros((size,) * dims, bool)
    centre_line[tuple(idx.T)] = True
    return distance_transform_edt(~centre_line) <= radius
