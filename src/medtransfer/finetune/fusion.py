"""Fine-tuning a fusion of several backbones (``models/fusion.py``), each member under its own strategy.

Each member's strategy freezes, truncates or decays *its* backbone exactly as it would alone (``prepare`` and
``param_groups`` on that member); the head(s) always train at the base learning rate. Strategies that change
freezing mid-run (``warmup``) or train nothing (``knn``) have no meaning inside a jointly trained fusion and are
refused by name.

``ensemble`` members are trained jointly, in one loop, on the *sum* of their losses: no parameter is shared and
Adam/SGD act per parameter, so each member and its head receive exactly the gradients they would receive alone on
the same batches; only model selection is joint (the epoch whose averaged probabilities score best on validation).

When every member is frozen throughout (``linear``), each member's pooled features come from the frozen-features
cache (``features.py``, keyed by that member's weights and normalisation) and only the head(s) train on their
concatenation — the same run as on images, minus (epochs - 1) passes of every member.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
from pydantic import SerializeAsAny
from torch import nn

from medtransfer.config import HardwareConfig, TrainConfig
from medtransfer.data.base import SPLITS, ImageDataset
from medtransfer.data.normalisation import UNIT_RANGE, Normalisation
from medtransfer.data.transforms import Preprocess
from medtransfer.errors import ConfigError
from medtransfer.finetune.features import FeatureSpec, cached_features
from medtransfer.finetune.frozen import _feature_set, _Passthrough, _refusal
from medtransfer.finetune.module import FineTuner
from medtransfer.finetune.policies.training import NO_POLICY
from medtransfer.finetune.strategies import Strategy, parse_strategy
from medtransfer.finetune.strategies.base import trainable
from medtransfer.finetune.strategies.knn import KNN
from medtransfer.models.backbones import Backbone
from medtransfer.models.fusion import FusionModel, ensemble_probabilities


def member_strategy(spec) -> Strategy:
    """A member's own strategy from YAML (as in ``strategies``), refused if it cannot act inside a fusion; the
    caller's error names the member's key."""
    strategy = spec if isinstance(spec, Strategy) else parse_strategy(spec, key="strategy")
    check_member_strategy(strategy)
    return strategy


def check_member_strategy(strategy: Strategy, where: str = "") -> None:
    if strategy.freezing_changes or isinstance(strategy, KNN):
        why = "it unfreezes mid-run" if strategy.freezing_changes else "a k-NN vote trains nothing"
        raise ConfigError(f"{where + ': ' if where else ''}strategy {strategy.label()!r} cannot train a fusion "
                          f"member ({why}); allowed: end_to_end, linear, range/q1..q4, truncate, lwlr_decay")


class MembersStrategy(Strategy):
    """What a fusion whose members all name their own strategy runs under: no run's strategy would act on any member,
    so such a fusion runs once per cell, under this record of what trains ("members: range 0.25-0.5 + ..."). Never
    written in YAML (not in the registry); ``prepare`` does nothing, as the fusion loop prepares every member."""

    name: Literal["members"] = "members"
    members: tuple[SerializeAsAny[Strategy], ...]

    @property
    def frozen_backbone(self) -> bool:  # read where a strategy's cost matters (the Ray queue's order)
        return all(s.frozen_backbone for s in self.members)

    def label(self) -> str:
        return "members: " + " + ".join(s.label() for s in self.members)


class FusionStrategy:
    """The members' strategies acting together, in the role ``FineTuner`` gives a strategy: optimiser groups (each
    member's as its own strategy makes them, plus the head(s) at ``lr``) and callbacks (none)."""

    def __init__(self, strategies: list[Strategy]):
        self.strategies = strategies

    def param_groups(self, model: nn.Module, lr: float, view: str) -> list[dict]:
        if not isinstance(model, FusionModel):  # the head(s) alone, on cached features
            return [{"params": trainable(model), "lr": lr}]
        groups = []
        for backbone, strategy in zip(model.members, self.strategies):
            alone = nn.Module()  # the member as its strategy sees it: a backbone with a (here empty) head
            alone.backbone, alone.head = backbone, nn.Sequential()
            groups += strategy.param_groups(alone, lr, view)
        groups.append({"params": trainable(model.head), "lr": lr})
        return [g for g in groups if g["params"]]

    def callbacks(self) -> list:
        return []


class FusionTuner(FineTuner):
    """``FineTuner`` whose ensemble logits (members, batch, outputs) train on the sum of the members' losses and
    predict the mean of their probabilities; a ``concat`` fusion is an ordinary classifier."""

    def __init__(self, *args, how: str = "concat", **kwargs):
        super().__init__(*args, **kwargs)
        self.how = how

    def loss(self, logits, y):
        if self.how == "concat":
            return super().loss(logits, y)
        return sum(super(FusionTuner, self).loss(member, y) for member in logits)

    def probabilities(self, logits):
        return super().probabilities(logits) if self.how == "concat" else ensemble_probabilities(logits, self.task)


def build_fusion(members: list[Backbone], strategies: list[Strategy], normalisations: list[Normalisation],
                 num_outputs: int, how: str, dropout: float, view: str) -> FusionModel:
    """Apply each member's strategy to it (truncation, freezing), then attach the fused head on what is left."""
    for backbone, strategy in zip(members, strategies):
        strategy.prepare(backbone, view)
    return FusionModel(members, normalisations, num_outputs, how, dropout)


def fine_tune_fusion(data: ImageDataset, train_indices: np.ndarray, members: list[Backbone],
                     strategies: list[Strategy], normalisations: list[Normalisation], how: str, dropout: float,
                     view: str, train: TrainConfig, hardware: HardwareConfig, seed: int, workdir: Path,
                     input_size: tuple[int, ...] | None = None, verbose: bool = False, frozen_features: bool = True,
                     resize_mode: str = "linear"):
    """``fine_tune`` for a fusion: ``members`` already initialised, ``normalisations`` each member's for the data's
    channels, ``resize_mode`` how every member's images are brought to ``input_size`` (as in ``fine_tune``).
    Classification only (the runner refuses segmentation before training)."""
    from medtransfer.finetune.train import (_uses_channels_last, fit_and_test, resolve_monitor, tensor_dataset,
                                            trainer_kwargs, training_targets)

    L.seed_everything(seed, workers=True, verbose=False)
    workdir, input_size = Path(workdir), input_size or data.image_size
    model = build_fusion(members, strategies, normalisations, data.num_classes, how, dropout, view)
    channels_last = _uses_channels_last(hardware, members[0])
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    fusion = FusionStrategy(strategies)
    monitor, eval_batch = resolve_monitor(train, data.task), max(train.batch_size, 256)
    if all(s.frozen_backbone for s in strategies) and _refusal(strategies[0], train, hardware,
                                                                 frozen_features, NO_POLICY) is None:
        start = time.perf_counter()
        with torch.random.fork_rng(devices=range(torch.cuda.device_count())):  # the head's RNG must not move
            joined = _member_features(data, members, normalisations, input_size, resize_mode, view, channels_last,
                                      trainer_kwargs(hardware, data.spatial_dims), eval_batch)
        extracted = time.perf_counter() - start
        head = FusionTuner(model.head, data.task, fusion, view, train, _Passthrough(), how=how)
        train_set = _feature_set(joined["train"], training_targets(data.train), np.asarray(train_indices))
        result = fit_and_test(head, model, data, train_set, _feature_set(joined["val"], data.val.labels),
                              _feature_set(joined["test"], data.test.labels), eval_batch, fusion, train, hardware,
                              seed, monitor, workdir, verbose)
        result.timings["features_s"] = extracted
        return result
    module = FusionTuner(model, data.task, fusion, view, train,
                         Preprocess(data.spatial_dims, size=input_size, augment=train.augment,
                                    normalisation=UNIT_RANGE, resize_mode=resize_mode),
                         channels_last=channels_last, how=how)
    return fit_and_test(module, model, data, tensor_dataset(data.train, train_indices, training=True),
                        tensor_dataset(data.val), tensor_dataset(data.test), eval_batch, fusion, train, hardware,
                        seed, monitor, workdir, verbose)


def _member_features(data: ImageDataset, members: list[Backbone], normalisations: list[Normalisation],
                     input_size: tuple[int, ...], resize_mode: str, view: str, channels_last: bool, kwargs: dict,
                     batch_size: int) -> dict[str, np.ndarray]:
    """Each frozen member's pooled features from the cache (keyed by its weights, its own normalisation and the
    resize mode), concatenated in member order: the input ``FusedHead`` reads."""
    per_member = []
    for member, normalisation in zip(members, normalisations):
        preprocess = Preprocess(data.spatial_dims, size=input_size, normalisation=normalisation,
                                resize_mode=resize_mode)
        spec = FeatureSpec.of(preprocess, input_size, view, kwargs["precision"], channels_last)
        per_member.append(cached_features(member, data, preprocess, spec, kwargs, batch_size))
    return {s: np.concatenate([f[s] for f in per_member], axis=1) for s in SPLITS}


__all__ = ["FusionStrategy", "FusionTuner", "MembersStrategy", "build_fusion", "check_member_strategy",
           "fine_tune_fusion", "member_strategy"]
