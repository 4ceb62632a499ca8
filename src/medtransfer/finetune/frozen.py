"""Runs whose backbone stays frozen throughout (``linear``, ``knn``) work on features cached once (``features.py``).

``linear`` trains the same head with the same optimiser, schedule, seeded data order, model selection and test as
the per-epoch path (``fit_and_test``); only its input changes from images to their cached features, so without
augmentation the result is the same run, minus (epochs - 1) passes of the backbone over train and val. With
augmentation the features of an image would differ every epoch, so such runs keep the per-epoch path (and their
behaviour); so do DDP runs, whose processes would each extract. ``knn`` needs no training: its scores are
neighbour votes (``strategies/knn.py``), on the same features.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from medtransfer.config import HardwareConfig, TrainConfig
from medtransfer.data.base import ImageDataset
from medtransfer.errors import ConfigError
from medtransfer.evaluate import compute_metrics
from medtransfer.finetune.features import FeatureSpec, cached_features
from medtransfer.finetune.module import FineTuner
from medtransfer.finetune.strategies import Strategy
from medtransfer.finetune.strategies.knn import KNN
from medtransfer.models.heads import Classifier


class _Passthrough(nn.Module):
    """The preprocessing of inputs that are already features: none."""

    def forward(self, x: torch.Tensor, train: bool = False) -> torch.Tensor:
        return x


def features_refusal(strategy: Strategy, train: TrainConfig, hardware: HardwareConfig,
                     wanted: bool = True) -> str | None:
    """Why a frozen-backbone run cannot use cached features (None: it can). k-NN has no other path."""
    if isinstance(strategy, KNN):
        if hardware.ddp:
            raise ConfigError("hardware.ddp: true rejected for strategy knn: a k-NN vote is one pass over cached "
                              "features on one device; allowed: ddp: false")
        return None
    if not wanted:
        return "frozen_features=False"
    if train.augment != "none":
        return f"train.augment: {train.augment} changes every epoch's features"
    if hardware.ddp:
        return "hardware.ddp: each process would extract the features"
    return None


def fine_tune_on_features(data: ImageDataset, train_indices: np.ndarray, model: Classifier, module: FineTuner,
                          strategy: Strategy, train: TrainConfig, hardware: HardwareConfig, seed: int, workdir: Path,
                          input_size: tuple[int, ...], view: str, verbose: bool):
    """``fine_tune`` for a frozen backbone: ``model`` and ``module`` are the ones the per-epoch path would train
    (the head already initialised by the seeded RNG), so both paths start from the same weights."""
    from medtransfer.finetune.train import fit_and_test, resolve_monitor, trainer_kwargs, training_targets

    start = time.perf_counter()
    kwargs = trainer_kwargs(hardware, data.spatial_dims)
    spec = FeatureSpec.of(module.preprocess, input_size, view, kwargs["precision"], module.channels_last)
    devices = list(range(torch.cuda.device_count()))
    with torch.random.fork_rng(devices=devices):  # extraction must not shift the RNG that dropout draws from
        features = cached_features(model.backbone, data, module.preprocess, spec, kwargs,
                                   batch_size=max(train.batch_size, 256))
    extracted = time.perf_counter() - start
    idx = np.asarray(train_indices)
    if isinstance(strategy, KNN):
        return _knn_result(data, features, idx, strategy, model, extracted)
    targets = training_targets(data.train)
    train_set = _feature_set(features["train"], targets, idx)
    val_set, test_set = (_feature_set(features[s], getattr(data, s).labels) for s in ("val", "test"))
    head = FineTuner(model.head, data.task, strategy, view, train, _Passthrough())
    result = fit_and_test(head, model, train_set, val_set, test_set, max(train.batch_size, 256), strategy, train,
                          hardware, seed, resolve_monitor(train, data.task), Path(workdir), data.spatial_dims, verbose)
    result.timings["features_s"] = extracted
    return result


def _feature_set(features: np.ndarray, labels: np.ndarray, indices: np.ndarray | None = None) -> TensorDataset:
    """(index, feature, label) triples, the layout ``FineTuner`` reads (its index de-duplicates DDP outputs)."""
    idx = np.arange(len(features)) if indices is None else indices
    return TensorDataset(torch.from_numpy(idx), torch.from_numpy(features[idx]), torch.from_numpy(labels[idx]))


def _knn_result(data: ImageDataset, features: dict[str, np.ndarray], idx: np.ndarray, strategy: KNN,
                model: Classifier, extracted: float):
    from medtransfer.finetune.train import FineTuneResult, training_targets

    start = time.perf_counter()
    reference = features["train"][idx]
    targets = training_targets(data.train)[idx]
    vote = lambda split: strategy.scores(reference, targets, features[split], data.task,  # noqa: E731
                                         data.num_classes)
    val_metrics, _ = compute_metrics(data.task, data.val.labels, vote("val"))
    voted = time.perf_counter()
    test_scores = vote("test")
    metrics, per_class = compute_metrics(data.task, data.test.labels, test_scores)
    return FineTuneResult(
        metrics=metrics, per_class=per_class, val_metrics=val_metrics,
        predictions={"index": np.arange(len(data.test)), "y_true": data.test.labels, "scores": test_scores},
        timings={"fit_s": voted - start, "test_s": time.perf_counter() - voted, "features_s": extracted},
        best_epoch=-1, epochs_run=0, trainable_params=0,
        total_params=sum(p.numel() for p in model.backbone.parameters()))
