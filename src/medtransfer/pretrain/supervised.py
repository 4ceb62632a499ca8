"""Supervised (continual) pre-training: backbone + linear head trained on a labelled dataset, only the backbone kept.

The in-domain step of "ImageNet -> chest X-rays -> target task" (Hosseinzadeh Taher et al. 2021, domain-adaptive
pre-training): cross-entropy for binary/multi-class/ordinal labels, per-label binary cross-entropy for multi-label
sets such as ChestX-ray14. Images get the same on-device augmentation as the SSL methods (one view per image).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medtransfer.pretrain.base import BaseMethod, MethodOptions


class Supervised(BaseMethod):
    Options = MethodOptions
    family = "supervised"
    needs_labels = True

    def __init__(self, backbone, options: MethodOptions, task: str, num_classes: int, **kwargs):
        super().__init__(backbone, options, **kwargs)
        self.task = task
        self.head = nn.Linear(backbone.num_features, num_classes)

    def ssl_loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.backbone(self.normalise(self.views(images))))
        if self.task == "multilabel":
            return F.binary_cross_entropy_with_logits(logits, labels.float())
        return F.cross_entropy(logits, labels.reshape(-1).long())
