"""Focal loss (Lin et al. 2017): each example's cross-entropy times (1 − p_t)^γ, so well-classified examples count
less; γ = 0 is cross-entropy. Composes with class weights (α_t) and label smoothing (``PolicyLoss``)."""

from typing import ClassVar

from pydantic import Field

from medtransfer.finetune.policies.base import Policy


class Focal(Policy):
    main: ClassVar[str] = "gamma"
    gamma: float = Field(gt=0)

    def loss_options(self, labels, num_classes):
        return {"gamma": self.gamma}
