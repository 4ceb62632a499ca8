"""Globally pooled features after every unit of a view: what the probe and the representation shift compare."""

from __future__ import annotations

import time

import numpy as np
import torch

from medtransfer.data.transforms import Preprocess
from medtransfer.models.backbones import Backbone

BATCH = 256


def pool_map(backbone: Backbone, x: torch.Tensor) -> torch.Tensor:
    """An intermediate step output as one vector per image: its map (``to_map``; a ViT's patch tokens) averaged over
    space, as a truncated network's head reads it (global average pooling)."""
    return backbone.to_map(x).flatten(2).mean(2)


@torch.no_grad()
def unit_features(backbone: Backbone, images: np.ndarray, preprocess: Preprocess, view: str,
                  unit_seconds: np.ndarray | None = None) -> list[np.ndarray]:
    """(N, channels) float64 pooled features after the last step of each unit of ``view``, backbone in eval mode
    (BatchNorm on its running statistics, as a frozen unit runs in fine-tuning), no augmentation. The last unit is
    pooled by the backbone itself (a ViT's final norm and token pooling), as every untruncated head reads it.

    ``unit_seconds`` (one entry per unit), when given, is increased by the time each unit's steps took."""
    was_training = backbone.training
    backbone.eval()
    unit_of = {i: u for u, group in enumerate(backbone.view(view)) for i in group}
    ends = {group[-1]: u for u, group in enumerate(backbone.view(view))}
    out: list[list[np.ndarray]] = [[] for _ in ends]
    device = next(backbone.parameters()).device
    for start in range(0, len(images), BATCH):
        x = preprocess(torch.from_numpy(images[start:start + BATCH]).to(device))
        for i, step in enumerate(backbone.steps):
            began = time.perf_counter()
            x = backbone.run_step(step, x)
            if unit_seconds is not None:
                if x.is_cuda:
                    torch.cuda.synchronize()
                unit_seconds[unit_of[i]] += time.perf_counter() - began
            if i in ends:
                last = i + 1 == len(backbone.steps)  # exactly what a head on the whole network reads
                pooled = backbone.pool(backbone.finish(x)) if last else pool_map(backbone, x)
                out[ends[i]].append(pooled.double().cpu().numpy())
    backbone.train(was_training)
    return [np.concatenate(parts) for parts in out]
