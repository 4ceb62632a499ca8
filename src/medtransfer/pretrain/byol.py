"""BYOL (Grill et al. 2020, "Bootstrap Your Own Latent").

The online network (the saved ``backbone`` + projection + prediction MLP) predicts the target network's projection of
another view; the target is an EMA of the online backbone + projection. Loss: the normalised MSE
2 - 2 cos(p, z'), symmetrised over the two views. Heads, loss and EMA update are lightly's.

Defaults: heads as in the paper (hidden 4096 with BN + ReLU, output 256); momentum 0.99 raised to 1 by cosine
(lightly's BYOL recipe for short runs; the paper's base is 0.996 for 1000 ImageNet epochs, which is too slow a target
for a few hundred steps on a small medical set).
"""

from __future__ import annotations

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
from pydantic import Field

from medtransfer.pretrain.base import MethodOptions
from medtransfer.pretrain.momentum import MomentumMethod, momentum_copy


class BYOLOptions(MethodOptions):
    hidden_dim: int = Field(4096, ge=1)  # BYOL sec. 3.3: MLP hidden size 4096
    output_dim: int = Field(256, ge=1)  # BYOL sec. 3.3: projection/prediction output 256
    momentum: float = Field(0.99, ge=0, le=1)  # base of the cosine schedule to 1 (see module docstring)


class BYOL(MomentumMethod):
    Options = BYOLOptions
    family = "contrastive"

    def __init__(self, backbone, options: BYOLOptions, **kwargs):
        super().__init__(backbone, options, **kwargs)
        self.projection = BYOLProjectionHead(backbone.num_features, options.hidden_dim, options.output_dim)
        self.prediction = BYOLPredictionHead(options.output_dim, options.hidden_dim, options.output_dim)
        self.backbone_momentum = momentum_copy(backbone)
        self.projection_momentum = momentum_copy(self.projection)
        self.criterion = NegativeCosineSimilarity()

    def momentum_pairs(self):
        return [(self.backbone, self.backbone_momentum), (self.projection, self.projection_momentum)]

    def online(self, x):
        return self.prediction(self.projection(self.backbone(self.normalise(x))))

    @torch.no_grad()
    def target(self, x):
        return self.projection_momentum(self.backbone_momentum(self.normalise(x))).detach()

    def loss(self, p0, p1, z0, z1):
        """BYOL's symmetrised loss (paper eq. 2 plus its swapped twin): sum over the two directions of
        ||p/|p| - z'/|z'|||^2 = 2 - 2 cos(p, z'), averaged over the batch."""
        return 4 + 2 * (self.criterion(p0, z1) + self.criterion(p1, z0))

    def ssl_loss(self, images):
        x0, x1 = self.views(images), self.views(images)
        return self.loss(self.online(x0), self.online(x1), self.target(x0), self.target(x1))
