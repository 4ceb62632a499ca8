"""SwAV (Caron et al. 2020, "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments").

Each view's L2-normalised projection is scored against a set of learned prototypes; the codes of one view (soft
assignments made equipartitioned by Sinkhorn-Knopp) are predicted from the scores of the other view (swapped
prediction). Projection head, prototypes and loss (with Sinkhorn) are lightly's.

Paper details kept: prototypes re-normalised onto the unit sphere at every step, prototypes frozen (their gradients
cancelled, as in the official code) during the first epoch, temperature 0.1, Sinkhorn epsilon 0.05 with 3 iterations,
3000 prototypes, 2-layer projector (2048 hidden with BN, 128 out). Left out: multi-crop (only the 2 global views;
small crops of 16-28 px medical images carry too little), and the feature queue the paper adds for batches < 256.
Under DDP the Sinkhorn normalisation runs over all GPUs' batches (``sinkhorn_gather_distributed``).
"""

from __future__ import annotations

import torch.nn.functional as F
from lightly.loss import SwaVLoss
from lightly.models.modules import SwaVProjectionHead, SwaVPrototypes
from pydantic import Field

from medtransfer.pretrain.base import BaseMethod, MethodOptions


class SwAVOptions(MethodOptions):
    temperature: float = Field(0.1, gt=0)  # SwAV, sec. 4 / appendix: tau = 0.1
    sinkhorn_epsilon: float = Field(0.05, gt=0)  # SwAV appendix: epsilon = 0.05
    sinkhorn_iterations: int = Field(3, ge=1)  # SwAV, sec. 3.1: 3 iterations
    n_prototypes: int = Field(3000, ge=1)  # SwAV, ImageNet: K = 3000 (lower it for tiny data sets)
    hidden_dim: int = Field(2048, ge=1)  # SwAV projector: 2048 hidden
    output_dim: int = Field(128, ge=1)  # SwAV projector: 128 out
    freeze_prototypes_epochs: int = Field(1, ge=0)  # SwAV appendix: prototypes fixed during the first epoch


class SwAV(BaseMethod):
    Options = SwAVOptions
    family = "contrastive"

    def __init__(self, backbone, options: SwAVOptions, **kwargs):
        super().__init__(backbone, options, **kwargs)
        self.projection = SwaVProjectionHead(backbone.num_features, options.hidden_dim, options.output_dim)
        self.prototypes = SwaVPrototypes(options.output_dim, options.n_prototypes)
        self.criterion = SwaVLoss(temperature=options.temperature, sinkhorn_iterations=options.sinkhorn_iterations,
                                  sinkhorn_epsilon=options.sinkhorn_epsilon, sinkhorn_gather_distributed=True)
        self.on_epoch(0, 1)  # the state of the first epoch until a driver says otherwise

    def scores(self, x):
        """Similarities of the view's normalised projection to the prototypes (B, n_prototypes)."""
        z = F.normalize(self.projection(self.backbone(self.normalise(x))), dim=1)
        return self.prototypes(z)

    def ssl_loss(self, images):
        self.prototypes.normalize()  # back onto the unit sphere before they are used (paper, every iteration)
        return self.criterion([self.scores(self.views(images)), self.scores(self.views(images))], [])

    def on_epoch(self, epoch, total_epochs):
        super().on_epoch(epoch, total_epochs)
        self.prototypes_frozen = epoch < self.options.freeze_prototypes_epochs

    def after_backward(self):
        super().after_backward()
        if self.prototypes_frozen:
            for p in self.prototypes.parameters():
                p.grad = None  # AdamW skips parameters without a gradient: no update, no weight decay
