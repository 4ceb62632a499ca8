"""Online linear probe: a linear classifier trained on *detached* backbone features during pre-training.

It never sends a gradient into the backbone, so pre-training stays self-supervised; it only lets a user see, epoch
by epoch, whether the representation is becoming useful for the labels before spending a fine-tuning grid on it
(the "online linear evaluation" of solo-learn and lightly's benchmarks).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class OnlineProbe(nn.Module):
    def __init__(self, num_features: int, task: str, num_classes: int):
        super().__init__()
        self.task = task
        self.linear = nn.Linear(num_features, num_classes)

    def loss(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self.linear(features.detach())
        if self.task == "multilabel":
            return F.binary_cross_entropy_with_logits(logits, labels.float())
        return F.cross_entropy(logits, labels)

    @torch.no_grad()
    def scores(self, features: torch.Tensor) -> torch.Tensor:
        logits = self.linear(features)
        return torch.sigmoid(logits) if self.task == "multilabel" else torch.softmax(logits.float(), dim=1)
