"""U-Net-style decoders over a backbone's multi-scale maps, one climb shared by segmentation and the restorative
pre-training methods (SparK, Models Genesis, denoising).

Both start at the deepest map and, per shallower map, upsample to its size (nearest: cheap and exact for integer
factors), concatenate it as a skip and apply one block (``UpConcatDecoder.climb``). What differs is what each needs
around that climb: the restorative decoder (``UNetDecoder``) takes ``backbone.feature_maps`` as they come, adds a
bottom block and a head to the image's channels at the input resolution, with conv-BN-ReLU blocks in 2D or 3D;
3D segmentation (``UNetDecoder3D``) reads smp's encoder-feature convention (a pyramid with placeholders, see
``segmentation.py``) with MONAI's ``UnetBasicBlock`` (instance norm, as in MONAI's 3D U-Nets). 2D segmentation uses
segmentation-models-pytorch's own ``UnetDecoder``.
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


class UpConcatDecoder(nn.Module):
    """The climb every U-Net decoder here shares; subclasses build ``blocks`` (one per skip, deep to shallow)."""

    blocks: nn.ModuleList

    def climb(self, x: torch.Tensor, skips) -> torch.Tensor:
        for block, skip in zip(self.blocks, skips):
            x = block(torch.cat([resize(x, skip.shape[2:]), skip], dim=1))
        return x


class UNetDecoder(UpConcatDecoder):
    """Restorative methods: deepest map -> input resolution through one (upsample, concat skip, conv block) per
    shallower stage, then a head to ``out_chans``."""

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
        x = self.climb(self.bottom(maps[-1]), reversed(maps[:-1]))
        return self.head(resize(x, out_size))


class UNetDecoder3D(UpConcatDecoder):
    """smp's U-Net decoder wiring in 3D with MONAI blocks: upsample to the next level, concatenate its skip, two
    conv-norm-act layers (``UnetBasicBlock``, instance norm as in MONAI's 3D U-Nets)."""

    def __init__(self, encoder_channels: list[int], decoder_channels: list[int]):
        from monai.networks.blocks import UnetBasicBlock  # MONAI takes seconds to import; 2D never needs it

        super().__init__()
        skips = list(encoder_channels[1:])[::-1]
        ins = [skips[0], *decoder_channels[:-1]]
        skip_channels = skips[1:]
        self.blocks = nn.ModuleList(
            UnetBasicBlock(3, i + s, o, kernel_size=3, stride=1, norm_name=("instance", {"affine": True}))
            for i, s, o in zip(ins, skip_channels, decoder_channels))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        deep_first = features[1:][::-1]
        return self.climb(deep_first[0], deep_first[1:])
