"""Layer-wise learning-rate decay (as in BEiT/MAE fine-tuning): the head gets the base rate and unit *i* of *n*
(counted from the input) gets ``lr * decay ** (n - i)``, so early, generic layers move least."""

from typing import Literal

from pydantic import Field

from medtransfer.finetune.strategies.base import Strategy
from medtransfer.models.backbones import owns


class LayerwiseLRDecay(Strategy):
    name: Literal["lwlr_decay"] = "lwlr_decay"
    decay: float = Field(0.75, gt=0, le=1)

    def label(self) -> str:
        return f"lwlr_decay {self.decay:g}"

    def param_groups(self, model, lr, view):
        units = model.backbone.unit_prefixes(view)
        groups = [{"params": list(model.head.parameters()), "lr": lr}]
        named = list(model.backbone.model.named_parameters())
        for i, prefixes in enumerate(units):
            params = [p for name, p in named if any(owns(pre, name) for pre in prefixes)]
            groups.append({"params": params, "lr": lr * self.decay ** (len(units) - i)})
        return groups
