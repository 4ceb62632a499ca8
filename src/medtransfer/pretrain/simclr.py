"""SimCLR (Chen et al. 2020): two random views of each image are pulled together and pushed from all other images
in the batch (NT-Xent). Loss and projection head are lightly's; defaults are the paper's for small batches
(temperature 0.5, 2-layer MLP head, 128-d output)."""

from __future__ import annotations

from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from pydantic import Field

from medtransfer.pretrain.base import BaseMethod, MethodOptions


class SimCLROptions(MethodOptions):
    temperature: float = Field(0.5, gt=0)
    hidden_dim: int = Field(512, ge=1)
    output_dim: int = Field(128, ge=1)


class SimCLR(BaseMethod):
    Options = SimCLROptions
    family = "contrastive"

    def __init__(self, backbone, options: SimCLROptions, **kwargs):
        super().__init__(backbone, options, **kwargs)
        self.projection = SimCLRProjectionHead(backbone.num_features, options.hidden_dim, options.output_dim)
        # gather_distributed: under DDP the negatives come from every GPU's batch, as in the paper
        self.criterion = NTXentLoss(temperature=options.temperature, gather_distributed=True)

    def embed(self, x):
        return self.projection(self.backbone(self.normalise(x)))

    def ssl_loss(self, images):
        return self.criterion(self.embed(self.views(images)), self.embed(self.views(images)))
