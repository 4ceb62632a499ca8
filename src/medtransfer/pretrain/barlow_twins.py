"""Barlow Twins (Zbontar et al. 2021): the cross-correlation matrix of the two views' (batch-standardised) embeddings
is pushed to the identity: sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2. Loss and projection head are lightly's.

Defaults: lambda 5e-3 (paper, sec. 2 / ablation); the 3-layer projector (BN + ReLU after the first two layers) at
2048 units rather than the paper's 8192: two 8192x8192 layers are ~134M parameters (2 GB with AdamW state), too much
for small medical data and CPU runs; the paper's fig. 4 shows the method works (less well) at smaller widths.
Set ``hidden_dim``/``output_dim`` to 8192 for the paper's projector. Under DDP the cross-correlation is averaged over
GPUs (``gather_distributed``), as in the paper's algorithm.
"""

from __future__ import annotations

from lightly.loss import BarlowTwinsLoss
from lightly.models.modules import BarlowTwinsProjectionHead
from pydantic import Field

from medtransfer.pretrain.base import BaseMethod, MethodOptions


class BarlowTwinsOptions(MethodOptions):
    lambda_param: float = Field(5e-3, ge=0)  # Barlow Twins, sec. 2: lambda = 5e-3
    hidden_dim: int = Field(2048, ge=1)  # paper: 8192 (see module docstring)
    output_dim: int = Field(2048, ge=1)  # paper: 8192 (see module docstring)


class BarlowTwins(BaseMethod):
    Options = BarlowTwinsOptions
    family = "contrastive"

    def __init__(self, backbone, options: BarlowTwinsOptions, **kwargs):
        super().__init__(backbone, options, **kwargs)
        self.projection = BarlowTwinsProjectionHead(backbone.num_features, options.hidden_dim, options.output_dim)
        self.criterion = BarlowTwinsLoss(lambda_param=options.lambda_param, gather_distributed=True)

    def embed(self, x):
        return self.projection(self.backbone(self.normalise(x)))

    def ssl_loss(self, images):
        return self.criterion(self.embed(self.views(images)), self.embed(self.views(images)))
