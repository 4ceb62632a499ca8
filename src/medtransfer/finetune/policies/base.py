"""The policy contract: one training-time remedy per module, each a pydantic model with one main parameter.

A policy acts through at most a few hooks — the augmentation level of the images, mixing of a batch, options of
the loss, the sampler of the training set — so several compose in one grid entry (``TrainingPolicy``) without
knowing of each other. Defaults do nothing, so a policy changes exactly what it claims.
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from torch.utils.data import Sampler


SINGLE_LABEL = ("binary", "multiclass", "ordinal")  # tasks trained with cross-entropy on one label per image


class Mixed(NamedTuple):
    """A mixed batch: images, the labels of the partner each image was mixed with, and the share of its own."""

    x: torch.Tensor
    partner_y: torch.Tensor
    lam: float


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # the parameter a bare value sets, as in ``{mixup: 0.2}``
    main: ClassVar[str]
    # tasks whose training it can act on; segmentation has no per-image label to mix, weight, smooth or balance
    tasks: ClassVar[tuple[str, ...]] = SINGLE_LABEL
    # True when it changes the images every epoch: a frozen backbone's features cannot then be cached
    changes_images: ClassVar[bool] = False

    def label(self) -> str:
        value = getattr(self, self.main)
        return f"{self.name} {value:g}" if isinstance(value, float) else f"{self.name} {value}"

    @property
    def name(self) -> str:
        from medtransfer.finetune.policies import POLICIES
        return next(key for key, cls in POLICIES.items() if cls is type(self))

    def augment(self) -> str | None:
        """The fine-tuning augmentation level, or None to leave ``train.augment`` in force."""
        return None

    def mix(self, x: torch.Tensor, y: torch.Tensor) -> Mixed | None:
        return None

    def loss_options(self, labels: np.ndarray, num_classes: int) -> dict:
        """Keyword arguments of ``PolicyLoss`` (``weight``, ``label_smoothing``, ``gamma``) from the training labels."""
        return {}

    def sampler(self, labels: np.ndarray, num_samples: int, generator: torch.Generator) -> Sampler | None:
        return None
