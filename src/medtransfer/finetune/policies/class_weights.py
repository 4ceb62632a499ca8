"""Class-weighted loss, weights from the run's *training subset*: ``balanced`` is scikit-learn's n / (C · n_c);
``inverse_sqrt`` is proportional to 1 / √n_c, scaled like ``balanced`` so that Σ_c w_c · n_c = n (a milder remedy)."""

from typing import ClassVar, Literal

import numpy as np
import torch
from sklearn.utils.class_weight import compute_class_weight

from medtransfer.finetune.policies.base import Policy


def class_weights(kind: str, labels: np.ndarray, num_classes: int) -> np.ndarray:
    if kind == "balanced":
        return compute_class_weight("balanced", classes=np.arange(num_classes), y=labels)
    root = np.sqrt(np.bincount(labels, minlength=num_classes).astype(float))
    return len(labels) / (root * root.sum())


class ClassWeights(Policy):
    main: ClassVar[str] = "kind"
    kind: Literal["balanced", "inverse_sqrt"]

    def loss_options(self, labels, num_classes):
        return {"weight": torch.as_tensor(class_weights(self.kind, labels, num_classes), dtype=torch.float32)}
