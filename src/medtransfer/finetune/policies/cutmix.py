"""CutMix (Yun et al. 2019): a box of each training image is replaced by the same box of a shuffled partner; the box
covers a share 1 − λ of the image (λ ~ Beta(alpha, alpha), seeded), one box per batch, in 2D or 3D, and the labels
mix by the share of pixels actually pasted."""

from typing import ClassVar

import torch
from pydantic import Field

from medtransfer.data.augment_ops import random_box
from medtransfer.finetune.policies.base import SINGLE_LABEL, Mixed, Policy


class CutMix(Policy):
    main: ClassVar[str] = "alpha"
    tasks: ClassVar[tuple[str, ...]] = (*SINGLE_LABEL, "multilabel")
    changes_images: ClassVar[bool] = True
    alpha: float = Field(gt=0)

    def mix(self, x, y):
        share = 1 - float(torch.distributions.Beta(self.alpha, self.alpha).sample())
        partner = torch.randperm(len(x)).to(x.device)
        box = random_box(tuple(x.shape[2:]), share, x.device)
        lam = 1 - box.float().mean().item()
        return Mixed(torch.where(box, x[partner], x), y[partner], lam)
