"""Layer-wise learning-rate decay (as in BEiT/MAE fine-tuning): the head gets the base rate and unit *i* of *n*
(counted from the input) gets ``lr * decay ** (n - i)``, so early, generic layers move least."""

from typing import Literal

from pydantic import Field

from medtransfer.finetune.strategies.base import Strategy


class LayerwiseLRDecay(Strategy):
    name: Literal["lwlr_decay"] = "lwlr_decay"
    decay: float = Field(0.75, gt=0, le=1)

    def label(self) -> str:
        return f"lwlr_decay {self.decay:g}"

    def param_groups(self, model, lr, view):
        units = model.backbone.unit_parameters(view)
        groups = [{"params": list(model.head.parameters()), "lr": lr}]
        for i, params in enumerate(units):
            groups.append({"params": params, "lr": lr * self.decay ** (len(units) - i)})
        return groups
