"""The single-label training loss the loss policies compose: cross-entropy with class weights and label smoothing
(PyTorch's own definitions), times the focal factor (1 − p_t)^γ when γ > 0. Without options it is exactly
``F.cross_entropy``, so runs without a loss policy train as before."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PolicyLoss(nn.Module):
    def __init__(self, weight: torch.Tensor | None = None, label_smoothing: float = 0.0, gamma: float = 0.0):
        super().__init__()
        self.register_buffer("weight", weight, persistent=False)
        self.label_smoothing, self.gamma = label_smoothing, gamma

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if not self.gamma:
            return F.cross_entropy(logits, y, weight=self.weight, label_smoothing=self.label_smoothing)
        ce = F.cross_entropy(logits, y, weight=self.weight, label_smoothing=self.label_smoothing, reduction="none")
        p_true = torch.softmax(logits, dim=1).gather(1, y[:, None])[:, 0]
        # the weighted mean's denominator, as cross_entropy's: Σ w_{y_i} (n without weights)
        total = self.weight[y].sum() if self.weight is not None else torch.tensor(float(len(y)))
        return ((1 - p_true) ** self.gamma * ce).sum() / total
