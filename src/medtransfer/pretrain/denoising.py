"""Denoising autoencoder (Vincent et al., ICML 2008; JMLR 2010): reconstruct the clean image from a noisy one.

Corruption is additive Gaussian noise (standard deviation ``noise_std``, on the [0, 1] scale) and, optionally,
masking noise (a random ``mask_ratio`` of pixels set to 0, the corruption of Vincent et al. 2008). Vincent et al. 2010
study Gaussian sigma 0.05-0.5 and masking 0-50 %; the defaults (sigma 0.1, no masking) sit in that range. Same light
U-Net decoder as Models Genesis, sigmoid output, MSE to the clean image.
"""

from __future__ import annotations

import torch
from pydantic import Field

from medtransfer.pretrain.base import MethodOptions
from medtransfer.pretrain.restoration import RestorationMethod


class DenoisingOptions(MethodOptions):
    noise_std: float = Field(0.1, ge=0)  # Vincent et al. 2010, within the studied range
    mask_ratio: float = Field(0.0, ge=0, lt=1)  # masking noise, Vincent et al. 2008 (off by default)
    decoder_max_width: int = Field(256, ge=8)


class DenoisingAE(RestorationMethod):
    Options = DenoisingOptions

    def corrupt(self, images):
        noisy = images + self.options.noise_std * torch.randn_like(images)
        if self.options.mask_ratio > 0:
            keep = torch.rand(len(images), 1, *images.shape[2:], device=images.device) >= self.options.mask_ratio
            noisy = noisy * keep
        return noisy, images
