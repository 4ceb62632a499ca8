"""Frozen parts computed once: a backbone frozen throughout (``linear``, ``knn``) or a frozen prefix below trained
units (``range``/``truncate`` starting above the stem) is run once over the images and cached (``features.py``).

``linear`` trains the same head with the same optimiser, schedule, seeded data order, model selection and test as
the per-epoch path (``fit_and_test``); only its input changes from images to their cached features, so without
augmentation the result is the same run, minus (epochs - 1) passes of the backbone over train and val. With
augmentation, or a training policy that mixes images (mixup, cutmix), the features of an image would differ every
epoch, so such runs keep the per-epoch path (and their behaviour); so do DDP runs, whose processes would each
extract. A frozen prefix is handled the same way — the
trained units and the head run on its cached output maps — when those fit ``MAX_PREFIX_BYTES``. ``warmup``, whose
frozen phase ends mid-run, always trains on images. ``knn`` needs no training: its scores are neighbour votes
(``strategies/knn.py``), on the same pooled features.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from medtransfer.config import HardwareConfig, TrainConfig
from medtransfer.data.base import SPLITS, ImageDataset
from medtransfer.errors import ConfigError
from medtransfer.evaluate import compute_metrics
from medtransfer.finetune.features import FeatureSpec, cached_features
from medtransfer.finetune.module import FineTuner
from medtransfer.finetune.policies import TrainingPolicy
from medtransfer.finetune.strategies import Strategy
from medtransfer.finetune.strategies.knn import KNN
from medtransfer.models.backbones import Backbone
from medtransfer.models.heads import Classifier

log = logging.getLogger(__name__)
MAX_PREFIX_BYTES = 2 * 2**30  # cached prefix maps of all splits, float32, held in memory while training


class _Passthrough(nn.Module):
    """The preprocessing of inputs that are already features: none."""

    def forward(self, x: torch.Tensor, train: bool = False) -> torch.Tensor:
        return x


def cached_input_spec(strategy: Strategy, module: FineTuner, data: ImageDataset, input_size: tuple[int, ...],
                      view: str, train: TrainConfig, hardware: HardwareConfig, wanted: bool) -> FeatureSpec | None:
    """What this run trains on instead of images: the pooled features of a frozen backbone, the output maps of a
    frozen prefix, or nothing (None: images every epoch, as before; the reason is logged in one line)."""
    from medtransfer.finetune.train import trainer_kwargs

    backbone = module.model.backbone
    steps = None if strategy.frozen_backbone else frozen_prefix(strategy, backbone)
    if steps == 0:
        return None
    refusal = _refusal(strategy, train, hardware, wanted, module.policy)
    if refusal is None and steps is not None:
        size = _prefix_bytes(backbone, steps, sum(len(getattr(data, s)) for s in SPLITS))
        if size > MAX_PREFIX_BYTES:
            refusal = f"its output, {size / 2**30:.1f} GiB, exceeds the {MAX_PREFIX_BYTES / 2**30:g} GiB limit"
    if refusal is not None:
        what = "backbone" if steps is None else f"prefix ({backbone.steps[steps - 1].name} and below)"
        log.info("%s: the frozen %s runs every epoch: %s", strategy.label(), what, refusal)
        return None
    precision = trainer_kwargs(hardware, data.spatial_dims)["precision"]
    return FeatureSpec.of(module.preprocess, input_size, view, precision, module.channels_last, steps)


def frozen_prefix(strategy: Strategy, backbone: Backbone) -> int:
    """How many leading steps stay frozen for the whole run (0 where a strategy changes freezing mid-run)."""
    if strategy.freezing_changes:
        return 0
    for n in range(len(backbone.steps)):
        if any(backbone.model.get_parameter(name).requires_grad for name in backbone.step_parameter_names(n)):
            return n
    return len(backbone.steps)


def check_hardware(strategy: Strategy, hardware: HardwareConfig) -> None:
    """k-NN has no per-epoch path to fall back on, and one pass on one device is all it needs: no DDP."""
    if isinstance(strategy, KNN) and hardware.ddp:
        raise ConfigError("hardware.ddp: true rejected for strategy knn: a k-NN vote is one pass over cached "
                          "features on one device; allowed: ddp: false")


def _refusal(strategy: Strategy, train: TrainConfig, hardware: HardwareConfig, wanted: bool,
             policy: TrainingPolicy) -> str | None:
    if isinstance(strategy, KNN):
        check_hardware(strategy, hardware)
        return None
    if not wanted:
        return "frozen_features=False"
    if train.augment != "none":
        return f"train.augment: {train.augment} changes its output every epoch"
    if policy.changes_images:
        return f"policy {policy.label()} changes its input every epoch"
    if hardware.ddp:
        return "hardware.ddp: each process would compute it"
    return None


def _prefix_bytes(backbone: Backbone, steps: int, n_images: int) -> int:
    """float32 bytes of the prefix's output for ``n_images``."""
    return math.prod(backbone.step_output_shape(steps - 1)) * 4 * n_images


class _AfterPrefix(nn.Module):
    """The classifier minus its frozen prefix: cached prefix maps in, logits out; same parameters in the same order
    (so the optimiser is the same), and ``train()`` still reaches ``Classifier.train``, which holds frozen BatchNorm
    in eval mode."""

    def __init__(self, model: Classifier, start: int):
        super().__init__()
        self.model, self.start = model, start

    def forward(self, x):
        backbone = self.model.backbone
        for step in backbone.steps[self.start:]:
            x = backbone.run_step(step, x)
        return self.model.head(backbone.pool(backbone.finish(x)))


def fine_tune_on_features(data: ImageDataset, train_indices: np.ndarray, module: FineTuner, spec: FeatureSpec,
                          strategy: Strategy, train: TrainConfig, hardware: HardwareConfig, seed: int, workdir: Path,
                          view: str, verbose: bool, epoch_draw=None):
    """``fine_tune`` on cached inputs: ``module`` is the one the per-epoch path would train (its head already
    initialised by the seeded RNG), so both paths start from the same weights and draw the same random numbers."""
    from medtransfer.finetune.train import fit_and_test, resolve_monitor, trainer_kwargs, training_targets

    model = module.model
    start = time.perf_counter()
    kwargs = trainer_kwargs(hardware, data.spatial_dims)
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):  # dropout's RNG must not move
        features = cached_features(model.backbone, data, module.preprocess, spec, kwargs,
                                   batch_size=max(train.batch_size, 256))
    extracted = time.perf_counter() - start
    idx = np.asarray(train_indices)
    if isinstance(strategy, KNN):
        return _knn_result(data, features, idx, strategy, model, extracted)
    train_set = _feature_set(features["train"], training_targets(data.train), idx)
    val_set, test_set = (_feature_set(features[s], getattr(data, s).labels) for s in ("val", "test"))
    trained = model.head if spec.steps is None else _AfterPrefix(model, spec.steps)
    head = FineTuner(trained, data.task, strategy, view, train, _Passthrough(), module.channels_last, module.policy,
                     module.criterion)
    result = fit_and_test(head, model, data, train_set, val_set, test_set, max(train.batch_size, 256), strategy,
                          train, hardware, seed, resolve_monitor(train, data.task), Path(workdir), verbose, epoch_draw)
    result.timings["features_s"] = extracted
    return result


def _feature_set(features: np.ndarray, labels: np.ndarray, indices: np.ndarray | None = None) -> TensorDataset:
    """(index, feature, label) triples, the layout ``FineTuner`` reads (its index de-duplicates DDP outputs)."""
    idx = np.arange(len(features)) if indices is None else indices
    return TensorDataset(torch.from_numpy(idx), torch.from_numpy(features[idx]), torch.from_numpy(labels[idx]))


def _knn_result(data: ImageDataset, features: dict[str, np.ndarray], idx: np.ndarray, strategy: KNN,
                model: Classifier, extracted: float):
    from medtransfer.finetune.diagnostics import constant_prediction
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
        total_params=sum(p.numel() for p in model.backbone.parameters()),
        warnings=constant_prediction(data.task, data.test.labels, test_scores, data.class_names))
