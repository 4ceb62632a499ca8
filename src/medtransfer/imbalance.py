"""The imbalance axis as an experiment file states it and as runs are labelled by it; no torch or data loading here, so
configs, tables and reports read it cheaply. How a ratio is reached is ``data.imbalance``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from typing_extensions import Annotated

RATIO_MARK = " @ "  # "pneumoniamnist @ 10:1": the dataset label of a run at a set ratio


@dataclass(frozen=True)
class Imbalance:
    """One point of the imbalance axis, as a run acts on it (and as its run id records it)."""

    ratio: float
    mode: str = "subsample"
    rare_class: Union[int, str, None] = None

    def to_dict(self) -> dict:
        return {"ratio": self.ratio, "mode": self.mode, "rare_class": self.rare_class}


class ImbalanceConfig(BaseModel):
    """``imbalance: [null, 10, 50]`` or ``{ratios: [...], mode: subsample|resample, rare_class: NAME or INDEX}``;
    null is the natural ratio (the runs every experiment had before this axis)."""

    model_config = ConfigDict(extra="forbid")

    ratios: list[Optional[Annotated[float, Field(ge=1)]]] = Field(default_factory=lambda: [None], min_length=1)
    mode: Literal["subsample", "resample"] = "subsample"
    rare_class: Optional[Union[int, str]] = Field(None, description="default: the least frequent class of the "
                                                                    "run's labelled subset")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data):
        if data is None:
            return {}
        return {"ratios": data} if isinstance(data, list) else data

    @field_validator("ratios")
    @classmethod
    def _distinct(cls, ratios: list) -> list:
        if len(set(ratios)) != len(ratios):
            raise ValueError(f"duplicate ratios: {ratios}; each ratio is one level of the grid")
        return ratios

    def settings(self) -> list[Optional[Imbalance]]:
        return [None if r is None else Imbalance(r, self.mode, self.rare_class) for r in self.ratios]


def with_ratio(dataset_label: str, setting: Optional[Imbalance]) -> str:
    """The dataset label a run is stored and reported under: runs at different ratios train on different data, so
    tables, comparisons and per-class prevalences keep them apart; the natural ratio keeps the plain label."""
    return dataset_label if setting is None else f"{dataset_label}{RATIO_MARK}{setting.ratio:g}:1"


def split_ratio(label: str) -> tuple[str, str]:
    """("pneumoniamnist", "10:1") from a stored dataset label; ("pneumoniamnist", "natural") without a ratio."""
    base, _, ratio = label.partition(RATIO_MARK)
    return base, ratio or "natural"
