"""A light U-Net-style decoder over a CNN backbone's multi-scale maps, shared by the restorative methods.

``backbone.feature_maps(x)`` gives one map per native stage, shallow to deep. The decoder starts at the deepest map
and, per shallower stage, upsamples to that stage's size, concatenates the skip map and applies one conv block; a last
block at the input resolution maps to the image's channel count. Convolutions, norms and interpolation follow
``spatial_dims`` so one class serves 2D and 3D. The output is linear; methods add a sigmoid where targets are [0, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medtransfer.models.backbones import Backbone


def _conv(spatial_dims: int):
    return nn.Conv2d if spatial_dims == 2 else nn.Conv3d


def _norm(spatial_dims: int):
    return nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d


def conv_block(spatial_dims: int, c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(_conv(spatial_dims)(c_in, c_out, 3, padding=1, bias=False), _norm(spatial_dims)(c_out),
                         nn.ReLU(inplace=True))


def resize(x: torch.Tensor, size) -> torch.Tensor:
    """Upsample (or pass through) ``x`` to ``size``; nearest keeps it cheap and exact for integer factors."""
    size = tuple(int(s) for s in size)
    return x if tuple(x.shape[2:]) == size else F.interpolate(x, size=size, mode="nearest")


class UNetDecoder(nn.Module):
    """Deepest map -> input resolution through one (upsample, concat skip, conv block) per shallower stage."""

    def __init__(self, spatial_dims: int, channels: list[int], out_chans: int, max_width: int = 256,
                 min_width: int = 16):
        super().__init__()
        widths = [max(min_width, min(c, max_width)) for c in channels]
        self.spatial_dims = spatial_dims
        self.bottom = conv_block(spatial_dims, channels[-1], widths[-1])
        self.blocks = nn.ModuleList(conv_block(spatial_dims, widths[i + 1] + channels[i], widths[i])
                                    for i in reversed(range(len(channels) - 1)))
        self.head = nn.Sequential(conv_block(spatial_dims, widths[0], widths[0]),
                                  _conv(spatial_dims)(widths[0], out_chans, 1))

    @classmethod
    def for_backbone(cls, backbone: Backbone, **kwargs) -> "UNetDecoder":
        return cls(backbone.spatial_dims, [c for c, _ in backbone.map_shapes], backbone.in_chans, **kwargs)

    def forward(self, maps: list[torch.Tensor], out_size) -> torch.Tensor:
        x = self.bottom(maps[-1])
        for block, skip in zip(self.blocks, reversed(maps[:-1])):
            x = block(torch.cat([resize(x, skip.shape[2:]), skip], dim=1))
        return self.head(resize(x, out_size))
