"""Jigsaw puzzles (Noroozi & Favaro 2016) in 2D and Rubik's-cube ordering (Zhuang et al. 2019) in 3D.

The image is cut into a grid of cells (2D: 3x3 = 9 tiles; 3D: 2x2x2 = 8 sub-cubes), a random crop of each cell is
taken (the gap between tiles keeps the network from matching edges, as in Noroozi & Favaro), the tiles are shuffled by
one of a fixed set of N permutations, every tile is encoded by the shared backbone, the tile features (through a
shared per-tile layer) are concatenated in shuffled order and an MLP predicts the permutation's index.

Permutation set (``hamming_permutations``): from a seeded random start, repeatedly add the permutation (of all n!)
whose *minimal* Hamming distance to the chosen ones is largest, ties broken by the largest summed distance, then by
enumeration order (Noroozi & Favaro's Algorithm 1 maximises the average distance; max-min keeps every pair far apart).
Deterministic: same (n_tiles, n_permutations, seed) -> same set. With 9 tiles and 100 permutations its minimal
pairwise distance is ``MIN_HAMMING_9_100``; 100 random permutations of 9 typically have a minimum of 2-3.

Tile sizes: tiles go through the backbone at their cropped size when it can take them (ResNets pool adaptively);
a UNet encoder needs 2^(down stages + 1) voxels (its instance norms need > 1 voxel), so smaller tiles are resized up
to that; a ViT has a fixed input size, so tiles are resized to the backbone's input size (costly: n_tiles full-size
passes). ``tile_size`` forces a size.
Registry name "jigsaw" covers both: 2D jigsaw and 3D Rubik's cube (ordering only; the sub-cube rotation task of
Zhuang et al. is not implemented).
"""

from __future__ import annotations

import itertools
from functools import lru_cache
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from medtransfer.errors import ConfigError
from medtransfer.pretrain.base import BaseMethod, MethodOptions
from medtransfer.seeds import Seed

MIN_HAMMING_9_100 = 6  # checked by tests/pretrain/test_predictive.py
MAX_TILES = 9  # all n! permutations are enumerated: 9! = 362,880 is fine, 27! is not


@lru_cache(maxsize=8)
def hamming_permutations(n_tiles: int, n_permutations: int, seed: int = 0) -> np.ndarray:
    """A fixed (n_permutations, n_tiles) int64 set of permutations chosen greedily for maximal Hamming distance."""
    if n_tiles > MAX_TILES:
        raise ConfigError(f"jigsaw: {n_tiles} tiles are too many to enumerate their permutations (at most {MAX_TILES})")
    everything = np.array(list(itertools.permutations(range(n_tiles))), dtype=np.int8)
    if not 2 <= n_permutations <= len(everything):
        raise ConfigError(f"jigsaw: n_permutations must be in [2, {len(everything)}] for {n_tiles} tiles, "
                          f"not {n_permutations}")
    start = int(np.random.default_rng(seed).integers(len(everything)))
    chosen = [start]
    min_d = (everything != everything[start]).sum(1).astype(np.int64)
    sum_d = min_d.copy()
    scale = n_tiles * n_permutations + 1  # min distance dominates, the sum breaks ties
    for _ in range(n_permutations - 1):
        key = min_d * scale + sum_d
        key[chosen] = -1
        j = int(np.argmax(key))
        chosen.append(j)
        d = (everything != everything[j]).sum(1)
        np.minimum(min_d, d, out=min_d)
        sum_d += d
    return everything[chosen].astype(np.int64)


def to_tiles(x: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, C, *spatial) -> (B, grid^d, C, *cell), tiles in raster order (the image cropped to a multiple of grid)."""
    b, c, *spatial = x.shape
    d = len(spatial)
    cell = [s // grid for s in spatial]
    x = x[(slice(None), slice(None)) + tuple(slice(0, grid * n) for n in cell)]
    x = x.reshape(b, c, *itertools.chain.from_iterable((grid, n) for n in cell))
    order = [0] + [2 + 2 * i for i in range(d)] + [1] + [3 + 2 * i for i in range(d)]
    return x.permute(order).reshape(b, grid ** d, c, *cell)


def from_tiles(tiles: torch.Tensor, grid: int) -> torch.Tensor:
    """Inverse of ``to_tiles``: (B, grid^d, C, *cell) -> (B, C, *(grid * cell))."""
    b, _, c, *cell = tiles.shape
    d = len(cell)
    x = tiles.reshape(b, *(grid,) * d, c, *cell)
    order = [0, d + 1] + list(itertools.chain.from_iterable((1 + i, d + 2 + i) for i in range(d)))
    return x.permute(order).reshape(b, c, *(grid * n for n in cell))


def shuffle_tiles(tiles: torch.Tensor, perms: torch.Tensor) -> torch.Tensor:
    """Position i of sample b receives tile ``perms[b, i]``."""
    return tiles[torch.arange(len(tiles), device=tiles.device)[:, None], perms]


def unshuffle_tiles(tiles: torch.Tensor, perms: torch.Tensor) -> torch.Tensor:
    return shuffle_tiles(tiles, perms.argsort(dim=1))


def random_crop_tiles(tiles: torch.Tensor, crop: tuple[int, ...]) -> torch.Tensor:
    """An independent random crop of size ``crop`` from every tile, by one batched gather."""
    b, n, c, *cell = tiles.shape
    d = len(cell)
    ones = (1,) * d
    device = tiles.device
    index = [torch.arange(b, device=device).view(b, 1, *ones), torch.arange(n, device=device).view(1, n, *ones)]
    for i in range(d):
        offset = torch.randint(0, cell[i] - crop[i] + 1, (b, n), device=tiles.device).view(b, n, *ones)
        shape = [1] * d
        shape[i] = crop[i]
        index.append(offset + torch.arange(crop[i], device=tiles.device).view(1, 1, *shape))
    return tiles.movedim(2, -1)[tuple(index)].movedim(-1, 2)  # (B, n, *crop, C) -> (B, n, C, *crop)


class JigsawOptions(MethodOptions):
    grid: Optional[int] = Field(None, ge=2)  # None: 3 in 2D (Noroozi & Favaro), 2 in 3D (Zhuang et al.'s 2x2x2)
    # REFERENCE.md method facts: 100 permutations typical (Noroozi & Favaro compare set sizes from 100 upwards)
    n_permutations: int = Field(100, ge=2)
    permutation_seed: Seed = 0
    # Noroozi & Favaro crop a 64x64 tile from each 75x75 cell of a 225x225 image: a random gap between tiles.
    crop_fraction: float = Field(64 / 75, gt=0, le=1)
    tile_size: Optional[int] = Field(None, ge=1)  # None: see the module docstring
    tile_norm: bool = True  # standardise each tile on its own (Noroozi & Favaro: against low-level shortcuts)
    # Noroozi & Favaro's context-free network: a shared per-tile fc6 (1024), the tiles concatenated into fc7 (4096),
    # then the permutation classifier; here on the backbone's pooled tile features
    tile_dim: int = Field(1024, ge=1)
    hidden_dim: int = Field(4096, ge=1)
    augment: bool = True  # a random medical view of the whole image before cutting it


class Jigsaw(BaseMethod):
    Options = JigsawOptions
    family = "predictive"
    spatial_dims = (2, 3)

    def __init__(self, backbone, options: JigsawOptions, **kwargs):
        super().__init__(backbone, options, **kwargs)
        d = backbone.spatial_dims
        self.grid = options.grid or (3 if d == 2 else 2)
        self.n_tiles = self.grid ** d
        self.register_buffer("permutations", torch.from_numpy(
            hamming_permutations(self.n_tiles, options.n_permutations, options.permutation_seed)).clone(),
            persistent=False)
        cell = [s // self.grid for s in self.input_size]
        if min(cell) < 1:
            raise ConfigError(f"jigsaw: input {tuple(self.input_size)} is too small for a {self.grid}-grid")
        self.crop = tuple(max(1, round(n * options.crop_fraction)) for n in cell)
        self.tile_input = self._tile_input(backbone)
        self.tile_layer = nn.Sequential(nn.Linear(backbone.num_features, options.tile_dim), nn.ReLU(inplace=True))
        self.classifier = nn.Sequential(nn.Linear(self.n_tiles * options.tile_dim, options.hidden_dim),
                                        nn.ReLU(inplace=True), nn.Linear(options.hidden_dim, options.n_permutations))
        self.criterion = nn.CrossEntropyLoss()

    def _tile_input(self, backbone) -> tuple[int, ...] | None:
        """The size tiles are resized to before the backbone, or None to feed them as cropped."""
        if self.options.tile_size is not None:
            return (self.options.tile_size,) * backbone.spatial_dims
        if backbone.family in ("vit", "hierarchical_vit"):  # position embeddings / windows fixed to the input size
            return tuple(backbone.input_size)
        if backbone.family == "cnn":  # every stage needs at least one pixel: tiles of at least the total stride
            stride = backbone.input_size[0] // backbone.map_shapes[-1][1][0]
            if min(self.crop) < stride:
                return tuple(max(stride, n) for n in self.crop)
        if backbone.family == "unet_encoder":
            # each down stage halves the size and its instance norm needs > 1 voxel after it
            need = 2 ** (1 + sum(step.name.startswith("down_") for step in backbone.steps))
            if min(self.crop) < need:
                return tuple(max(need, n) for n in self.crop)
        return None

    def pretext(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Shuffled tiles (B, n_tiles, C, *tile) and the permutation labels (B,)."""
        if self.options.augment:
            images = self.views(images)
        tiles = random_crop_tiles(to_tiles(images, self.grid), self.crop)
        labels = torch.randint(0, len(self.permutations), (len(images),), device=images.device)
        return shuffle_tiles(tiles, self.permutations[labels]), labels

    def encode_tiles(self, tiles: torch.Tensor) -> torch.Tensor:
        b, n, c, *size = tiles.shape
        x = self.normalise(tiles.reshape(b * n, c, *size))
        if self.options.tile_norm:
            dims = tuple(range(1, x.ndim))
            x = (x - x.mean(dims, keepdim=True)) / (x.std(dims, keepdim=True) + 1e-5)
        if self.tile_input is not None and tuple(size) != self.tile_input:
            x = F.interpolate(x, size=self.tile_input, mode="bilinear" if len(size) == 2 else "trilinear",
                              align_corners=False)
        return self.tile_layer(self.backbone(x)).reshape(b, -1)

    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits over the permutation set, labels) on a batch of [0, 1] images."""
        tiles, labels = self.pretext(images)
        return self.classifier(self.encode_tiles(tiles)), labels

    def ssl_loss(self, images):
        return self.criterion(*self.predict(images))
