"""Denoising autoencoder (Vincent et al., ICML 2008; JMLR 2010): reconstruct the clean image from a noisy one.

Corruption is additive Gaussian noise (standard deviation ``noise_std``, on the [0, 1] scale) and, optionally,
masking noise (a random ``mask_ratio`` of pixels set to 0, the corruption of Vincent et al. 2008). Vincent et al. 2010
study Gaussian sigma 0.05-0.5 and masking 0-50 %; the defaults (sigma 0.1, no masking) sit in that range. Same light
U-Net decoder as Models Genesis, sigmoid output, MSE to the clean image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from medtransfer.pretrain.base import BaseMethod, MethodOptions
from medtransfer.pretrain.decoder import UNetDecoder


class DenoisingOptions(MethodOptions):
    noise_std: float = Field(0.1, ge=0)  # Vincent et al. 2010, within the studied range
    mask_ratio: float = Field(0.0, ge=0, lt=1)  # masking noise, Vincent et al. 2008 (off by default)
    decoder_max_width: int = Field(256, ge=8)


class DenoisingAE(BaseMethod):
    Options = DenoisingOptions
    family = "restorative"
    spatial_dims = (2, 3)
    backbone_families = ("resnet", "unet_encoder")

    def __init__(self, backbone, options: DenoisingOptions, **kwargs):
        super().__init__(backbone, options, **kwargs)
        self.decoder = UNetDecoder.for_backbone(backbone, max_width=options.decoder_max_width)

    def corrupt(self, images: torch.Tensor) -> torch.Tensor:
        noisy = images + self.options.noise_std * torch.randn_like(images)
        if self.options.mask_ratio > 0:
            keep = torch.rand(len(images), 1, *images.shape[2:], device=images.device) >= self.options.mask_ratio
            noisy = noisy * keep
        return noisy

    def ssl_loss(self, images):
        restored = torch.sigmoid(self.decoder(self.backbone.feature_maps(self.normalise(self.corrupt(images))),
                                              images.shape[2:]))
        return F.mse_loss(restored, images)
