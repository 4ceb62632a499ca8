"""Truncated network (Khan & Fang's "shallower network", e.g. keep 0-75 %): units after the cut are deleted, the
head sits on the globally pooled output of the last kept unit, and the kept units are fine-tuned — all of them, or
only an optional ``train`` range (measured on the full network's depth)."""

from typing import Literal, Optional

from pydantic import field_validator

from medtransfer.errors import ConfigError
from medtransfer.finetune.strategies.base import Strategy, freeze_units_except
from medtransfer.models.depth import DepthRange


class Truncate(Strategy):
    name: Literal["truncate"] = "truncate"
    keep: str = "0-0.75"
    train: Optional[str] = None

    @field_validator("keep")
    @classmethod
    def _keep(cls, value: str) -> str:
        parsed = DepthRange.parse(value, key="keep")
        if parsed.start != 0:
            raise ValueError(f"keep must start at 0 (the input side), got {value!r}")
        return str(parsed)

    @field_validator("train")
    @classmethod
    def _train(cls, value):
        return None if value is None else str(DepthRange.parse(value, key="train"))

    def label(self) -> str:
        return f"truncate {self.keep}" + (f" train {self.train}" if self.train else "")

    def prepare(self, backbone, view):
        groups = backbone.view(view)
        kept = DepthRange.parse(self.keep).select(len(groups))
        trained = DepthRange.parse(self.train).select(len(groups)) if self.train else kept
        if not set(trained) <= set(kept):
            raise ConfigError(f"strategy truncate: train range {self.train} reaches past the kept range {self.keep}")
        backbone.truncate(sum(len(g) for g in groups[: len(kept)]))
        freeze_units_except(backbone, view, keep_trainable=trained)
