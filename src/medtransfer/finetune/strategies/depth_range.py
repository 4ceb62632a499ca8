"""Fine-tune only a depth range (Khan & Fang: 2nd quarter for contrastive SSL, 3rd for restorative); the rest is
frozen and the head is always trained. ``range`` accepts "0.25-0.5", "25-50%", "q2" or "q2-q3"."""

from typing import Literal

from pydantic import field_validator

from medtransfer.finetune.strategies.base import Strategy, freeze_units_except
from medtransfer.models.depth import DepthRange


class DepthRangeStrategy(Strategy):
    name: Literal["range"] = "range"
    range: str

    @field_validator("range")
    @classmethod
    def _parse(cls, value: str) -> str:
        return str(DepthRange.parse(value))

    def label(self) -> str:
        return f"range {self.range}"

    def prepare(self, backbone, view):
        units = DepthRange.parse(self.range).select(len(backbone.view(view)))
        freeze_units_except(backbone, view, keep_trainable=units)
