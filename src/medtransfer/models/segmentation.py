"""Segmentation networks: a dense decoder on any medtransfer backbone, so fine-tuning strategies act on the encoder
exactly as on a classifier's backbone (same object, same units) while the decoder — the "head" — always trains.

2D decoders are segmentation-models-pytorch's (``UnetDecoder``, ``FPNDecoder``, ``SegmentationHead``); 3D uses a
U-Net decoder of MONAI blocks (``UnetBasicBlock``, ``UnetOutBlock``) with the same wiring. Both read the encoder
through a *pyramid*: ``Backbone.feature_maps`` gives one map per native stage; the pyramid keeps the deepest map at
each resolution level (level k = 1/2^k of the input) and puts an empty (0-channel) map at levels the encoder skips,
e.g. /2 for a ResNet (stem straight to /4) or /2../8 for a ViT (one map at /16, tokens reshaped to a grid). Where
the encoder has no full-resolution map, the input image is the full-resolution skip, so 1-pixel structures (retinal
capillaries) are not left to upsampled /4 features alone. The decoder climbs back one level at a time, concatenating
a skip where there is one, so every backbone gets a progressive decoder. A truncated encoder has fewer stages, hence
a shallower pyramid and fewer decoder blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from monai.networks.blocks import UnetOutBlock
from segmentation_models_pytorch.base import SegmentationHead
from segmentation_models_pytorch.decoders.fpn.decoder import FPNDecoder
from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder
from torch import nn

from medtransfer.errors import ConfigError, allowed
from medtransfer.models.backbones import Backbone
from medtransfer.models.decoders import UNetDecoder3D
from medtransfer.models.heads import hold_frozen_batchnorm

DECODERS = ("unet", "fpn")
MIN_WIDTH, MAX_WIDTH = 16, 256  # decoder widths follow the encoder's, within these bounds (smp's 256..16 default)


INPUT = -1  # a pyramid source: the input image itself


@dataclass(frozen=True)
class Pyramid:
    """Per level ``0..deepest``: the index of the backbone map used there, ``INPUT`` or None (empty placeholder)."""

    sources: tuple[int | None, ...]
    channels: tuple[int, ...]  # 0 for placeholders
    sizes: tuple[tuple[int, ...], ...]  # map sizes at the backbone's input size

    @classmethod
    def of(cls, backbone: Backbone) -> "Pyramid":
        maps = backbone.map_shapes
        levels = [round(math.log2(backbone.input_size[0] / size[0])) for _, size in maps]
        deepest = {level: i for i, level in enumerate(levels)}  # later (deeper) maps win at a shared level
        deepest.setdefault(0, INPUT)
        sources = tuple(deepest.get(k) for k in range(max(levels) + 1))
        channels = tuple(backbone.in_chans if s == INPUT else 0 if s is None else maps[s][0] for s in sources)
        sizes = tuple(tuple(backbone.input_size) if s == INPUT else () if s is None else maps[s][1]
                      for s in sources)
        return cls(sources, channels, sizes)

    def features(self, x: torch.Tensor, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        """smp's encoder-feature convention: the input first (sets the output size), then one map per level."""
        out = [x]
        for level, source in enumerate(self.sources):
            if source is None:
                size = [math.ceil(s / 2 ** level) for s in x.shape[2:]]
                out.append(x.new_zeros(x.shape[0], 0, *size))
            else:
                out.append(x if source == INPUT else maps[source])
        return out

    def decoder_widths(self) -> list[int]:
        """One block per level below the deepest, deep to shallow, ending at full resolution; widths follow the
        skip's channels where there is one, else half the previous width."""
        width = min(MAX_WIDTH, self.channels[-1])
        widths = []
        for c in reversed(self.channels[:-1]):
            width = max(MIN_WIDTH, min(MAX_WIDTH, c if c else width // 2))
            widths.append(width)
        return widths


class SegmentationModel(nn.Module):
    """Backbone (encoder) + dense decoder; ``head`` (decoder and output conv) is what strategies always train.

    Frozen BatchNorm layers of the backbone stay in eval mode whatever ``train()`` is called with, as in
    ``Classifier``, so a frozen unit is bit-identical after training.
    """

    def __init__(self, backbone: Backbone, num_outputs: int, decoder: str = "unet"):
        super().__init__()
        if decoder not in DECODERS:
            raise ConfigError(f"train.segmentation.decoder: {decoder!r} is unknown; allowed: {allowed(DECODERS)}")
        self.backbone = backbone
        self.pyramid = Pyramid.of(backbone)
        if decoder == "fpn":
            self.head = _fpn(backbone, self.pyramid, num_outputs)
        else:
            widths = self.pyramid.decoder_widths()
            encoder_channels = [backbone.in_chans, *self.pyramid.channels]
            if backbone.spatial_dims == 2:
                decoder_module = UnetDecoder(encoder_channels, widths, n_blocks=len(widths))
                out = SegmentationHead(widths[-1], num_outputs, kernel_size=3)
            else:
                decoder_module = UNetDecoder3D(encoder_channels, widths)
                out = UnetOutBlock(3, widths[-1], num_outputs)
            self.head = nn.Sequential(decoder_module, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pyramid.features(x, self.backbone.feature_maps(x)))

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            hold_frozen_batchnorm(self.backbone)
        return self


def _fpn(backbone: Backbone, pyramid: Pyramid, num_outputs: int) -> nn.Sequential:
    """smp's FPN on the four deepest levels; it needs four real maps, each exactly twice the size of the next."""
    if backbone.spatial_dims != 2:
        raise ConfigError("train.segmentation.decoder: 'fpn' is 2D (segmentation-models-pytorch); allowed for 3D: unet")
    last = pyramid.sources[-4:]
    if len(last) < 4 or None in last:
        raise ConfigError(f"train.segmentation.decoder: 'fpn' needs four consecutive scales from the encoder; "
                          f"{backbone.name} (as truncated) has {sum(s is not None for s in pyramid.sources)}; "
                          "use decoder 'unet'")
    sizes = pyramid.sizes[-4:]
    top = len(pyramid.sources) - 4  # level of the finest FPN map
    stride = 2 ** (top + 3)
    if any(tuple(2 * s for s in b) != a for a, b in zip(sizes, sizes[1:])) or \
            any(s % stride for s in backbone.input_size):
        raise ConfigError(f"train.segmentation.decoder: 'fpn' needs an input (patch) size divisible by {stride} "
                          f"for {backbone.name}, got {backbone.input_size}; set train.segmentation.patch_size")
    width = max(32, min(MAX_WIDTH, pyramid.channels[-1]) // 32 * 32)  # GroupNorm(32, .) needs multiples of 32
    decoder = FPNDecoder(list(pyramid.channels), encoder_depth=3, pyramid_channels=width,
                         segmentation_channels=max(32, width // 2))
    return nn.Sequential(decoder, SegmentationHead(decoder.out_channels, num_outputs, kernel_size=1,
                                                   upsampling=2 ** top))
