"""``TrainingPolicy``: the policies of one grid entry, composed — what a run hands to augmentation, the training
step, the loss and the sampler, and what its run id and tables name it by."""

from __future__ import annotations

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, SerializeAsAny, model_serializer
from torch.utils.data import Sampler

from medtransfer.finetune.policies.base import SINGLE_LABEL, Mixed, Policy
from medtransfer.finetune.policies.loss import PolicyLoss


class TrainingPolicy(BaseModel):
    model_config = ConfigDict(frozen=True)
    parts: tuple[SerializeAsAny[Policy], ...] = ()

    @property
    def is_none(self) -> bool:
        return not self.parts

    def label(self) -> str:
        """Short, unique text for tables and the results store: "none" or e.g. "augment strong + mixup 0.2"."""
        return " + ".join(p.label() for p in self.parts) or "none"

    def identity(self) -> dict:
        """What the run id hashes: each policy's parameters by name."""
        return {p.name: p.model_dump(mode="json") for p in self.parts}

    @model_serializer
    def _as_entry(self):
        """Dumped as the experiment file's entry ("none" or {name: parameters}), which parses back to it."""
        return self.identity() or "none"

    @property
    def changes_images(self) -> bool:
        """True when the images differ from epoch to epoch (``augment: none`` changes nothing)."""
        return any(p.changes_images and p.augment() != "none" for p in self.parts)

    def refusal(self, task: str, train_augment: str) -> str | None:
        """Why this entry cannot train a ``task`` dataset (None if it can); names the policies refused."""
        refused = [p.name for p in self.parts if task not in p.tasks]
        if refused:
            from medtransfer.finetune.policies import POLICIES
            fits = [name for name, cls in POLICIES.items() if task in cls.tasks]
            return f"{', '.join(refused)} cannot act on {task} training; allowed for {task}: {', '.join(fits)}"
        if train_augment != "none" and any(p.augment() is not None for p in self.parts):
            return (f"augment with train.augment: {train_augment} gives two levels; allowed: set train.augment: none "
                    "and the level in each policy entry")
        return None

    def augment(self, default: str) -> str:
        return next((p.augment() for p in self.parts if p.augment() is not None), default)

    def mix(self, x: torch.Tensor, y: torch.Tensor) -> Mixed | None:
        return next((m for p in self.parts if (m := p.mix(x, y)) is not None), None)

    def criterion(self, task: str, labels: np.ndarray, num_classes: int) -> PolicyLoss | None:
        """The training loss of a single-label task from the training subset's labels; None (the task's own loss)
        for other tasks and for entries without a loss policy."""
        if task not in SINGLE_LABEL:
            return None
        options = {k: v for p in self.parts for k, v in p.loss_options(labels, num_classes).items()}
        return PolicyLoss(**options) if options else None

    def sampler(self, labels: np.ndarray, num_samples: int, generator: torch.Generator) -> Sampler | None:
        return next((s for p in self.parts if (s := p.sampler(labels, num_samples, generator)) is not None), None)


NO_POLICY = TrainingPolicy()
