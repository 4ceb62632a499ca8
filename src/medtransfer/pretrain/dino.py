"""DINO (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers").

Self-distillation without labels: a student (the saved ``backbone`` + DINO head) matches the output distribution of
a momentum teacher (EMA of student backbone + head) on the other view; the teacher's outputs are centred (EMA centre)
and sharpened (low temperature) to avoid collapse. Head, loss (centring) and EMA update are lightly's; the
teacher-temperature warm-up and the last-layer freeze follow the epoch the driver passes to ``on_epoch``.

Defaults from the paper / official code: output dim K = 65536, head hidden 2048, bottleneck 256, no BN in the head,
last layer weight-normalised and frozen during the first epoch, student temperature 0.1, teacher temperature warmed
up linearly from 0.04 to 0.07 over the first 30 epochs (capped at the run's epochs, so runs of 2+ epochs reach it),
centre momentum 0.9, teacher momentum 0.996 raised to 1 by cosine. Left out: multi-crop local views (2 global views
only), the weight-decay schedule 0.04 -> 0.4 and gradient clipping (the driver's AdamW is shared by all methods).
Under DDP the centre is averaged over GPUs by lightly (all-reduce in its centre update).
"""

from __future__ import annotations

import torch
from lightly.loss import DINOLoss
from lightly.models.modules import DINOProjectionHead
from lightly.models.utils import deactivate_requires_grad
from pydantic import Field

from medtransfer.pretrain.base import MethodOptions
from medtransfer.pretrain.momentum import MomentumMethod, momentum_copy


class DINOOptions(MethodOptions):
    output_dim: int = Field(65536, ge=1)  # DINO, sec. 3.1/appendix: K = 65536
    hidden_dim: int = Field(2048, ge=1)  # DINO head: 3-layer MLP, hidden 2048
    bottleneck_dim: int = Field(256, ge=1)  # DINO head: bottleneck 256 before the weight-normalised layer
    batch_norm: bool = False  # DINO: no BN in the projection head (official default use_bn_in_head=False)
    norm_last_layer: bool = True  # official code default
    freeze_last_layer_epochs: int = Field(1, ge=0)  # official code: last layer frozen during the first epoch
    student_temp: float = Field(0.1, gt=0)  # DINO, sec. 3.1: tau_s = 0.1
    warmup_teacher_temp: float = Field(0.04, gt=0)  # DINO, sec. 3.1: tau_t warm-up from 0.04 ...
    teacher_temp: float = Field(0.07, gt=0)  # ... to 0.07 ...
    warmup_teacher_temp_epochs: int = Field(30, ge=0)  # ... during the first 30 epochs (capped at the run length)
    center_momentum: float = Field(0.9, ge=0, le=1)  # DINO, eq. 4: m = 0.9
    momentum: float = Field(0.996, ge=0, le=1)  # DINO, sec. 3.1: teacher lambda cosine 0.996 -> 1


def teacher_temperature(options: DINOOptions, epoch: int, total_epochs: int) -> float:
    """The teacher temperature of ``epoch``: linear from ``warmup_teacher_temp`` at epoch 0 to ``teacher_temp`` at the
    last warm-up epoch (the warm-up capped at the run's epochs), then constant (lightly's/the paper's schedule)."""
    warmup = min(options.warmup_teacher_temp_epochs, total_epochs)
    if epoch >= warmup:
        return options.teacher_temp
    start, end = options.warmup_teacher_temp, options.teacher_temp
    return start + (end - start) * epoch / max(1, warmup - 1)  # torch.linspace(start, end, warmup)[epoch]


class DINO(MomentumMethod):
    Options = DINOOptions
    family = "contrastive"

    def __init__(self, backbone, options: DINOOptions, **kwargs):
        super().__init__(backbone, options, **kwargs)
        self.student_head = self._head()
        self.teacher_backbone = momentum_copy(backbone)
        # the head's weight-normalised last layer cannot be deep-copied: build a twin and copy the weights over
        self.teacher_head = self._head()
        self.teacher_head.load_state_dict(self.student_head.state_dict())
        deactivate_requires_grad(self.teacher_head)
        self.criterion = DINOLoss(output_dim=options.output_dim, teacher_temp=options.teacher_temp,
                                  student_temp=options.student_temp, center_momentum=options.center_momentum)
        self.on_epoch(0, 1)  # the state of the first epoch until a driver says otherwise

    def _head(self) -> DINOProjectionHead:
        o = self.options
        return DINOProjectionHead(self.backbone.num_features, o.hidden_dim, o.bottleneck_dim, o.output_dim,
                                  batch_norm=o.batch_norm, freeze_last_layer=o.freeze_last_layer_epochs,
                                  norm_last_layer=o.norm_last_layer)

    def momentum_pairs(self):
        return [(self.backbone, self.teacher_backbone), (self.student_head, self.teacher_head)]

    def student(self, x):
        return self.student_head(self.backbone(self.normalise(x)))

    @torch.no_grad()
    def teacher(self, x):
        return self.teacher_head(self.teacher_backbone(self.normalise(x))).detach()

    def ssl_loss(self, images):
        x0, x1 = self.views(images), self.views(images)
        return self.criterion([self.teacher(x0), self.teacher(x1)], [self.student(x0), self.student(x1)],
                              teacher_temp=self.teacher_temp)

    def on_epoch(self, epoch, total_epochs):
        super().on_epoch(epoch, total_epochs)
        self.epoch, self.teacher_temp = epoch, teacher_temperature(self.options, epoch, total_epochs)

    def after_backward(self):
        super().after_backward()
        self.student_head.cancel_last_layer_gradients(self.epoch)  # a no-op after freeze_last_layer_epochs
