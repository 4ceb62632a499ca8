"""Class-balanced sampling: each epoch draws its examples with replacement, with probability 1 / n_c for an example
of class c, so every class is drawn equally often in expectation (from the run's seeded generator)."""

from typing import ClassVar, Literal

import numpy as np
import torch
from torch.utils.data import WeightedRandomSampler

from medtransfer.finetune.policies.base import Policy


class BalancedSampler(Policy):
    main: ClassVar[str] = "enabled"
    enabled: Literal[True]

    def label(self) -> str:
        return "balanced_sampler"

    def sampler(self, labels, num_samples, generator):
        counts = np.bincount(labels)
        weights = torch.as_tensor(1.0 / counts[labels], dtype=torch.double)
        return WeightedRandomSampler(weights, num_samples, replacement=True, generator=generator)
