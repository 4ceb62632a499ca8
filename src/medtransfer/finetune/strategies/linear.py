"""Linear probe: the whole backbone is frozen (BatchNorm statistics included); only the linear head learns."""

from typing import ClassVar, Literal

from medtransfer.finetune.strategies.base import Strategy, freeze_units_except


class Linear(Strategy):
    name: Literal["linear"] = "linear"
    frozen_backbone: ClassVar[bool] = True

    def prepare(self, backbone, view):
        freeze_units_except(backbone, view, keep_trainable=[])
