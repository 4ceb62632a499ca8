"""The strategy contract and the one definition of "frozen" every strategy shares.

Frozen means: ``requires_grad=False``, left out of the optimizer (so no optimizer state), and BatchNorm kept in
eval mode so its running statistics never change (``Classifier.train`` enforces the last part). Depth ranges
always refer to the *full* network's depth, before any truncation.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict
from torch import nn

from medtransfer.models.backbones import Backbone
from medtransfer.models.heads import Classifier


class Strategy(BaseModel):
    """A way of fine-tuning: structural changes and freezing (``prepare``), learning rates (``param_groups``) and
    training-time behaviour (``callbacks``). Subclasses are pydantic models, so YAML parameters are validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    # True when no backbone parameter ever trains: its features are then computed once and cached (``frozen.py``)
    frozen_backbone: ClassVar[bool] = False
    # True when ``callbacks`` (un)freeze units during the run: no frozen part may then be computed once
    freezing_changes: ClassVar[bool] = False

    def label(self) -> str:
        """Short, unique text used in tables and run folders."""
        return self.name

    def prepare(self, backbone: Backbone, view: str) -> None:
        """Truncate and freeze before the head is attached and the optimizer built."""

    def param_groups(self, model: Classifier, lr: float, view: str) -> list[dict]:
        return [{"params": trainable(model), "lr": lr}]

    def callbacks(self) -> list:
        return []

    def schedule_problem(self, epochs: int) -> str | None:
        """Why this strategy cannot do what it says within ``epochs`` training epochs, or None if it can."""
        return None


def trainable(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def freeze_units_except(backbone: Backbone, view: str, keep_trainable: list[int]) -> None:
    """Freeze every unit of ``view`` whose index is not in ``keep_trainable``."""
    for i, params in enumerate(backbone.unit_parameters(view)):
        for param in params:
            param.requires_grad_(i in keep_trainable)
