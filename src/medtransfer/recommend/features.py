"""Globally pooled features after every unit of a view: what the probe and the representation shift compare."""

from __future__ import annotations

import numpy as np
import torch

from medtransfer.data.transforms import Preprocess
from medtransfer.models.backbones import Backbone

BATCH = 256


def pool_map(backbone: Backbone, x: torch.Tensor) -> torch.Tensor:
    """A step output as one vector per image: its map (``to_map``; a ViT's patch tokens) averaged over space. The
    same rule at every depth, so units of one network are compared on equal terms."""
    return backbone.to_map(x).flatten(2).mean(2)


@torch.no_grad()
def unit_features(backbone: Backbone, images: np.ndarray, preprocess: Preprocess, view: str) -> list[np.ndarray]:
    """(N, channels) float64 pooled features after the last step of each unit of ``view``, backbone in eval mode
    (BatchNorm on its running statistics, as a frozen unit runs in fine-tuning), no augmentation."""
    was_training = backbone.training
    backbone.eval()
    ends = {group[-1]: u for u, group in enumerate(backbone.view(view))}
    out: list[list[np.ndarray]] = [[] for _ in ends]
    device = next(backbone.parameters()).device
    for start in range(0, len(images), BATCH):
        x = preprocess(torch.from_numpy(images[start:start + BATCH]).to(device))
        for i, step in enumerate(backbone.steps):
            x = backbone.run_step(step, x)
            if i in ends:
                out[ends[i]].append(pool_map(backbone, x).double().cpu().numpy())
    backbone.train(was_training)
    return [np.concatenate(parts) for parts in out]
