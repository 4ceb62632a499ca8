"""Warm-up (Wolf et al.; "warm-up with frozen encoder" in Zhang et al.): the backbone is frozen for the first
``frozen_epochs`` epochs while the head learns, then everything is trained.

Lightning's ``BackboneFinetuning`` would do this, but it freezes BatchNorm by disabling running-stat tracking, so
frozen layers normalise with batch statistics during training — not our definition of frozen. The backbone's
parameters sit in the optimizer from the start (Adam/SGD create no state for parameters without gradients), which
keeps learning-rate schedulers consistent across the unfreeze.
"""

from typing import ClassVar, Literal

import lightning as L
from pydantic import Field

from medtransfer.finetune.strategies.base import Strategy, freeze_units_except


class Warmup(Strategy):
    name: Literal["warmup"] = "warmup"
    freezing_changes: ClassVar[bool] = True
    frozen_epochs: int = Field(10, ge=1)
    backbone_lr_factor: float = Field(1.0, gt=0)

    def label(self) -> str:
        return f"warmup {self.frozen_epochs}ep"

    def prepare(self, backbone, view):
        freeze_units_except(backbone, view, keep_trainable=[])

    def param_groups(self, model, lr, view):
        return [{"params": list(model.head.parameters()), "lr": lr},
                {"params": list(model.backbone.parameters()), "lr": lr * self.backbone_lr_factor}]

    def callbacks(self):
        return [UnfreezeBackbone(self.frozen_epochs)]

    def schedule_problem(self, epochs: int) -> str | None:
        if self.frozen_epochs < epochs:
            return None
        return (f"frozen_epochs={self.frozen_epochs} with train.epochs={epochs}: the backbone would never be "
                f"unfrozen, which is linear probing under another name; allowed: frozen_epochs < {epochs}")


class UnfreezeBackbone(L.Callback):
    def __init__(self, at_epoch: int):
        self.at_epoch = at_epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch >= self.at_epoch:  # from any later epoch too: a resumed run may start past it
            for param in pl_module.model.backbone.parameters():
                param.requires_grad_(True)
            pl_module.model.train()  # frozen BatchNorm layers were held in eval mode; now they train
