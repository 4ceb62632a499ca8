"""The experiment-level checks of the ``policies`` axis, made in ``runner.prepare`` before any training."""

from __future__ import annotations

from medtransfer.config import ExperimentConfig
from medtransfer.data.base import ImageDataset
from medtransfer.errors import ConfigError
from medtransfer.finetune.strategies.knn import KNN


def check_policies(cfg: ExperimentConfig, label: str, data: ImageDataset) -> None:
    """Refuse, naming the entry and the policy, an entry that cannot act on ``data`` (e.g. mixup on a segmentation
    dataset), that sets a level beside ``train.augment``, or any policy with ``knn``, which does not train."""
    for i, policy in enumerate(cfg.policies):
        problem = policy.refusal(data.task, cfg.train.augment)
        if problem:
            raise ConfigError(f"policies[{i}] ({policy.label()}) on dataset {label}: {problem}")
        knn = [s.label() for s in cfg.strategies if isinstance(s, KNN)]
        if knn and not policy.is_none:
            raise ConfigError(f"policies[{i}] ({policy.label()}) with strategy {knn[0]}: a k-NN vote does not train, "
                              "so no policy acts on it; allowed: policies [none] or strategies without knn")
