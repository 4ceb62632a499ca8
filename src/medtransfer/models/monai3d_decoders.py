"""The decoders MONAI's 3D encoders come with, as segmentation heads on a medtransfer backbone: Swin UNETR's (the whole
``SwinUNETR`` less its ``swinViT``, which is the backbone) and SegResNet's up path.

They read the backbone's stage maps through the segmentation pyramid, so the encoder stays the backbone (units,
freezing, checkpoints, the published SSL weights) while the decoder is the head that always trains. Both need the
encoder whole and input sizes its resolutions divide; ``native_decoder`` checks that before any training.
"""

from __future__ import annotations

import math

import torch
from monai.networks.nets import SegResNet, SwinUNETR

from medtransfer.errors import ConfigError
from medtransfer.models.backbones import Backbone

NATIVE_DECODERS = ("swin_unetr", "segresnet")  # each named after the backbone family it decodes


class SwinUNETRDecoder(SwinUNETR):
    """``SwinUNETR`` without its ``swinViT``: its forward on the hidden states the backbone's maps already are."""

    def __init__(self, in_chans: int, feature_size: int, num_outputs: int):
        # the swinViT built here is thrown away, so the cheapest one: the decoder depends on feature_size only
        super().__init__(in_channels=in_chans, out_channels=num_outputs, feature_size=feature_size,
                         depths=(1, 1, 1, 1))
        del self.swinViT

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """``features``: the input first, the five SwinViT hidden states (/2 .. /32) last (``Pyramid.features``)."""
        x, hidden = features[0], features[-5:]
        enc0, enc1 = self.encoder1(x), self.encoder2(hidden[0])
        enc2, enc3 = self.encoder3(hidden[1]), self.encoder4(hidden[2])
        dec3 = self.decoder5(self.encoder10(hidden[4]), hidden[3])
        return self.out(self.decoder1(self.decoder2(self.decoder3(self.decoder4(dec3, enc3), enc2), enc1), enc0))


class SegResNetDecoder(SegResNet):
    """``SegResNet`` without its down path: its own ``decode`` on the backbone's stage maps."""

    def __init__(self, init_filters: int, n_stages: int, num_outputs: int):
        super().__init__(spatial_dims=3, init_filters=init_filters, out_channels=num_outputs,
                         blocks_down=(1,) * n_stages, blocks_up=(1,) * (n_stages - 1))
        del self.convInit, self.down_layers
        self.n_stages = n_stages

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        deep_first = features[-self.n_stages:][::-1]
        return self.decode(deep_first[0], deep_first)


def native_decoder(backbone: Backbone, pyramid, num_outputs: int, decoder: str) -> torch.nn.Module:
    """The ``decoder`` head for ``backbone``, or a ConfigError naming what does not fit (family, truncation, size)."""
    key = "train.segmentation.decoder"
    if backbone.family != decoder:
        raise ConfigError(f"{key}: {decoder!r} decodes {decoder} backbones, not {backbone.name} "
                          f"({backbone.family}); use 'unet'")
    if decoder == "swin_unetr":
        # instance norm (training) needs more than one voxel in the /32 map
        width, n_maps, stride, voxels = backbone.model.embed_dim, 5, 32, 2
        head = SwinUNETRDecoder(backbone.in_chans, width, num_outputs)
    else:
        width, n_maps = backbone.model.init_filters, len(backbone.model.down_layers)
        stride, voxels = 2 ** (n_maps - 1), 1
        head = SegResNetDecoder(width, n_maps, num_outputs)
    expected = tuple(width * 2 ** k for k in range(n_maps))
    if pyramid.channels[-n_maps:] != expected:
        raise ConfigError(f"{key}: {decoder!r} reads the whole encoder ({n_maps} maps of {expected} channels); "
                          f"{backbone.name} as truncated gives {pyramid.channels[1:]}; use 'unet', which follows a "
                          "truncated encoder")
    if any(s % stride for s in backbone.input_size) or math.prod(pyramid.sizes[-1]) < voxels:
        raise ConfigError(f"{key}: {decoder!r} needs an input (patch) size divisible by {stride}"
                          + (" whose /32 map has more than one voxel" if voxels > 1 else "")
                          + f", got {backbone.input_size}; set train.segmentation.patch_size (e.g. 64)")
    return head
