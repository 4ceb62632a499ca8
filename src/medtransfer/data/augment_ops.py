"""Batched augmentations kornia lacks or makes slow (elastic deformation, 3D cut-out), and the random boxes that
cut-out and CutMix share. They draw from torch's generator, so a seeded run draws the same boxes and fields."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def random_boxes(n: int, shape: tuple[int, ...], shares: torch.Tensor, device=None) -> torch.Tensor:
    """(n, *shape) bool masks, box i covering about ``shares[i]`` of the image (equal share per axis) at a random
    position that keeps it whole inside the image."""
    dims = torch.tensor(shape, device=device)
    sides = (shares.to(device)[:, None] ** (1 / len(shape)) * dims).round().long()
    starts = (torch.rand(n, len(shape), device=device) * (dims - sides + 1)).long()
    inside = torch.ones((n, *shape), dtype=torch.bool, device=device)
    for axis, size in enumerate(shape):
        coord = torch.arange(size, device=device).view(1, *[size if a == axis else 1 for a in range(len(shape))])
        view = (n,) + (1,) * len(shape)
        lo, hi = starts[:, axis].view(view), (starts[:, axis] + sides[:, axis]).view(view)
        inside &= (coord >= lo) & (coord < hi)
    return inside


def random_box(shape: tuple[int, ...], share: float, device=None) -> torch.Tensor:
    """One box covering about ``share`` of an image of ``shape``."""
    return random_boxes(1, shape, torch.tensor([share]), device)[0]


class RandomCutout3D(nn.Module):
    """Zero a random box of ``scale`` (a range of shares of the volume) in each volume with probability ``p``."""

    def __init__(self, scale: tuple[float, float] = (0.02, 0.15), p: float = 0.5):
        super().__init__()
        self.scale, self.p = scale, p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = len(x)
        lo, hi = self.scale
        boxes = random_boxes(n, tuple(x.shape[2:]), lo + (hi - lo) * torch.rand(n), x.device)
        boxes &= (torch.rand(n, device=x.device) < self.p).view(n, 1, 1, 1)
        return x.masked_fill(boxes[:, None], 0.0)


class RandomElastic(nn.Module):
    """Elastic deformation of 2D images or volumes, as TorchIO's control-point approach: a random displacement on a
    coarse ``control``-per-axis grid (up to ``alpha`` of the half-width per axis), upsampled into a smooth field,
    warps each image with probability ``p``. Batched on the device; kornia's 2D elastic transform blurs a full-size
    noise field instead, about 30x slower on a CPU at 64 x 64."""

    def __init__(self, alpha: float = 0.05, control: int = 4, p: float = 0.5):
        super().__init__()
        self.alpha, self.control, self.p = alpha, control, p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, dims = len(x), x.ndim - 2
        coarse = (2 * torch.rand(n, dims, *(self.control,) * dims, device=x.device) - 1) * self.alpha
        coarse = coarse * (torch.rand(n, device=x.device) < self.p).view(n, *(1,) * (dims + 1))
        field = F.interpolate(coarse, size=x.shape[2:], mode="bilinear" if dims == 2 else "trilinear",
                              align_corners=True)
        theta = torch.eye(dims, dims + 1, device=x.device).expand(n, dims, dims + 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False) + field.movedim(1, -1)
        return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="border", align_corners=False)
