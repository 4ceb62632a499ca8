"""The shared shape of image-restoration pre-training (Models Genesis, denoising autoencoders): corrupt an image,
encode it with the backbone, decode with a light U-Net decoder, and regress the clean image (MSE in [0, 1])."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medtransfer.pretrain.base import BaseMethod
from medtransfer.models.decoders import UNetDecoder


class RestorationMethod(BaseMethod):
    """Subclasses define ``corrupt(images) -> (corrupted, target)``; options carry ``decoder_max_width``."""

    family = "restorative"
    spatial_dims = (2, 3)
    backbone_families = ("resnet", "unet_encoder", "cnn")  # convolutional stage maps for the U-Net decoder

    def __init__(self, backbone, options, **kwargs):
        super().__init__(backbone, options, **kwargs)
        self.decoder = UNetDecoder.for_backbone(backbone, max_width=options.decoder_max_width)

    def corrupt(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def restore(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(self.backbone.feature_maps(self.normalise(x)), x.shape[2:]))

    def ssl_loss(self, images):
        corrupted, target = self.corrupt(images)
        return F.mse_loss(self.restore(corrupted), target)
