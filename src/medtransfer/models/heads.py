"""Classification head and the backbone+head model that fine-tuning trains."""

from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from medtransfer.models.backbones import Backbone


class Classifier(nn.Module):
    """Backbone + linear head on its pooled features (of the last kept unit after truncation).

    Frozen BatchNorm layers (affine weights with ``requires_grad=False``) stay in eval mode whatever
    ``train()`` is called with, so a frozen unit's running statistics are never updated: Lightning calls
    ``train()`` at every epoch start and after every validation loop.
    """

    def __init__(self, backbone: Backbone, num_outputs: int, dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(backbone.num_features, num_outputs))

    def forward(self, x):
        return self.head(self.backbone(x))

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            hold_frozen_batchnorm(self.backbone)
        return self


def hold_frozen_batchnorm(backbone: nn.Module) -> None:
    """Put BatchNorm layers whose affine weights are frozen back in eval mode (the definition of frozen)."""
    for module in backbone.modules():
        if isinstance(module, _BatchNorm) and module.weight is not None and not module.weight.requires_grad:
            module.eval()
