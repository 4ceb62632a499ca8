"""mixup (Zhang et al. 2018): each training batch is blended with a shuffled copy of itself, x = λ·x + (1 − λ)·x[π],
λ ~ Beta(alpha, alpha) once per batch from torch's seeded generator; the loss is λ·L(y) + (1 − λ)·L(y[π]), which
composes with any loss policy (for plain cross-entropy it equals the loss on the mixed soft labels)."""

from typing import ClassVar

import torch
from pydantic import Field

from medtransfer.finetune.policies.base import SINGLE_LABEL, Mixed, Policy


class Mixup(Policy):
    main: ClassVar[str] = "alpha"
    tasks: ClassVar[tuple[str, ...]] = (*SINGLE_LABEL, "multilabel")
    changes_images: ClassVar[bool] = True
    alpha: float = Field(gt=0)

    def mix(self, x, y):
        lam = float(torch.distributions.Beta(self.alpha, self.alpha).sample())
        partner = torch.randperm(len(x)).to(x.device)
        return Mixed(lam * x + (1 - lam) * x[partner], y[partner], lam)
