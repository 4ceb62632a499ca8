"""Label smoothing (Szegedy et al. 2016): the target is (1 − ε)·one-hot + ε/C, as ``F.cross_entropy`` defines it."""

from typing import ClassVar

from pydantic import Field

from medtransfer.finetune.policies.base import Policy


class LabelSmoothing(Policy):
    main: ClassVar[str] = "epsilon"
    epsilon: float = Field(gt=0, lt=1)

    def loss_options(self, labels, num_classes):
        return {"label_smoothing": self.epsilon}
