"""MoCo v2 (Chen et al. 2020, "Improved Baselines with Momentum Contrastive Learning"; He et al. 2020 for MoCo v1).

A query encoder (the saved ``backbone`` + a 2-layer MLP head) is trained so that the query of one view matches the key
of another view, produced by a momentum encoder, against a queue of keys from earlier batches (InfoNCE). The loss and
the queue are lightly's ``NTXentLoss(memory_bank_size=...)`` (it enqueues the keys of each training step), the head is
``MoCoProjectionHead`` (v2: hidden 2048, output 128, no BN), the EMA update is lightly's ``update_momentum``.

Choices for small medical data (documented deviations from the ImageNet recipe):
- queue 4096 instead of the paper's 65536, and capped at the number of training images (``n_images``), so the
  queue never holds more than about one epoch of keys (a longer one would mostly hold stale keys of the same images,
  which are then used as negatives of themselves). Lightly initialises the queue with random unit vectors.
- momentum 0.99 raised to 1 on a cosine schedule (lightly's/BYOL's schedule; MoCo v2 uses a constant 0.999 over
  200 epochs of ImageNet, far more steps than a small medical set gives).
- no shuffled BN in the key encoder (only matters for multi-GPU; the keys' BN statistics come from the key batch).
Under DDP the keys of all GPUs are gathered into the queue (``gather_distributed``), as in the paper.
"""

from __future__ import annotations

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import MoCoProjectionHead
from pydantic import Field

from medtransfer.pretrain.base import MethodOptions
from medtransfer.pretrain.momentum import MomentumMethod, momentum_copy


class MoCoOptions(MethodOptions):
    temperature: float = Field(0.2, gt=0)  # MoCo v2, sec. 3 (tau = 0.2)
    queue_size: int = Field(4096, ge=0)  # paper 65536 on ImageNet; 4096 and capped at the training-set size here
    momentum: float = Field(0.99, ge=0, le=1)  # base of the cosine schedule to 1 (see module docstring)
    hidden_dim: int = Field(2048, ge=1)  # MoCo v2 MLP head: 2048-d hidden layer with ReLU
    output_dim: int = Field(128, ge=1)  # MoCo v2: 128-d output


class MoCo(MomentumMethod):
    Options = MoCoOptions
    family = "contrastive"

    def __init__(self, backbone, options: MoCoOptions, n_images: int | None = None, **kwargs):
        super().__init__(backbone, options, n_images=n_images, **kwargs)
        self.projection = MoCoProjectionHead(backbone.num_features, options.hidden_dim, options.output_dim)
        self.backbone_momentum = momentum_copy(backbone)
        self.projection_momentum = momentum_copy(self.projection)
        # the queue never holds more than the training images (see the module docstring)
        queue_size = min(options.queue_size, n_images) if n_images else options.queue_size
        bank = (queue_size, options.output_dim) if queue_size > 0 else 0
        self.criterion = NTXentLoss(temperature=options.temperature, memory_bank_size=bank, gather_distributed=True)

    def momentum_pairs(self):
        return [(self.backbone, self.backbone_momentum), (self.projection, self.projection_momentum)]

    def query(self, x):
        return self.projection(self.backbone(self.normalise(x)))

    @torch.no_grad()
    def key(self, x):
        return self.projection_momentum(self.backbone_momentum(self.normalise(x))).detach()

    def ssl_loss(self, images):
        q, k = self.query(self.views(images)), self.key(self.views(images))
        return self.criterion(q, k)  # positives: (q_i, k_i); negatives: the queue, which then receives k
