"""Several backbones fused into one classifier (Khan & Fang: combining SSL models beats the best single one).

Every member sees the same [0, 1] image, normalised with *its own* init's statistics, and yields pooled features.
``concat`` concatenates them and one head (dropout, linear) reads the result; ``ensemble`` gives each member its own
head, and the prediction is the mean of the members' probabilities. Both are split in two: ``features`` (members)
and ``fuse`` (heads on the concatenated features), so a fusion of frozen members can train ``fuse`` alone on cached
features, exactly as a linear probe trains its head.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from medtransfer.data.normalisation import Normalisation
from medtransfer.data.transforms import Normalised
from medtransfer.models.backbones import Backbone
from medtransfer.models.heads import hold_frozen_batchnorm

HOWS = ("concat", "ensemble")


class FusedHead(nn.Module):
    """Concatenated member features in; logits out (``concat``), or the members' logits stacked on a leading axis
    (``ensemble``, shape (members, batch, outputs))."""

    def __init__(self, widths: list[int], num_outputs: int, how: Literal["concat", "ensemble"], dropout: float):
        super().__init__()
        if how not in HOWS:
            raise ValueError(f"how: {how!r}; allowed: {', '.join(HOWS)}")
        self.widths, self.how = list(widths), how
        sizes = [sum(widths)] if how == "concat" else widths
        self.heads = nn.ModuleList(nn.Sequential(nn.Dropout(dropout), nn.Linear(w, num_outputs)) for w in sizes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.how == "concat":
            return self.heads[0](features)
        parts = torch.split(features, self.widths, dim=1)
        return torch.stack([head(part) for head, part in zip(self.heads, parts)])


class FusionModel(nn.Module):
    """Members (each a ``Backbone`` with its own normalisation) and the ``FusedHead`` on their pooled features.

    Like ``Classifier``, frozen BatchNorm layers of every member stay in eval mode whatever ``train()`` is called
    with, so a frozen member's running statistics never move.
    """

    def __init__(self, members: list[Backbone], normalisations: list[Normalisation], num_outputs: int,
                 how: Literal["concat", "ensemble"] = "concat", dropout: float = 0.0):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.inputs = nn.ModuleList(Normalised(m.spatial_dims, n) for m, n in zip(members, normalisations))
        self.head = FusedHead([m.num_features for m in members], num_outputs, how, dropout)

    @property
    def num_features(self) -> int:
        """Width of the concatenated features: the sum of the members' pooled widths."""
        return sum(self.head.widths)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([member(norm(x)) for member, norm in zip(self.members, self.inputs)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            for member in self.members:
                hold_frozen_batchnorm(member)
        return self


def ensemble_probabilities(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Mean over members (leading axis) of each member's probabilities: softmax per member, sigmoid per label for
    multi-label tasks. Averaging probabilities, not logits, keeps every member's calibration its own."""
    probs = torch.sigmoid(logits.float()) if task == "multilabel" else torch.softmax(logits.float(), dim=-1)
    return probs.mean(dim=0)
