"""``fine_tune``: one run — train on a labelled subset, select on validation, test once on the selected weights.

Lightning runs the loop, so the same call scales to several GPUs or nodes (``hardware.ddp``), mixed precision and
checkpointing. Model selection and early stopping read the validation split only; the test split is evaluated once,
on the checkpoint with the best validation score.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from medtransfer.config import HardwareConfig, TrainConfig
from medtransfer.data.base import ImageDataset, Split
from medtransfer.data.imbalance import EpochDraw, EpochSampler
from medtransfer.data.normalisation import DEFAULT, Normalisation
from medtransfer.data.transforms import Preprocess
from medtransfer.errors import ConfigError, allowed
from medtransfer.evaluate import LOWER_IS_BETTER, METRICS, SEGMENTATION_METRICS
from medtransfer.finetune.batches import EveryBatch
from medtransfer.finetune.diagnostics import diagnose
from medtransfer.finetune.frozen import cached_input_spec, fine_tune_on_features
from medtransfer.finetune.module import FineTuner
from medtransfer.finetune.policies import NO_POLICY, TrainingPolicy
from medtransfer.finetune.resume import (STATE_FILE, ResumeState, merge_log, resume_point, run_stamp,
                                        set_log_aside)
from medtransfer.finetune.segmentation import build_segmentation, segmentation_dataset
from medtransfer.finetune.strategies import Strategy
from medtransfer.models.backbones import Backbone
from medtransfer.models.heads import Classifier


@dataclass
class FineTuneResult:
    metrics: dict[str, float]
    per_class: dict[str, list[float]]
    val_metrics: dict[str, float]
    predictions: dict[str, np.ndarray]
    timings: dict[str, float] = field(default_factory=dict)
    best_epoch: int = -1
    epochs_run: int = 0
    trainable_params: int = 0
    total_params: int = 0
    warnings: list[str] = field(default_factory=list)  # see finetune.diagnostics: numbers not to trust blindly
    imbalance: dict | None = None  # data.imbalance: the training subset's natural and achieved class ratio
    resumed_from: list[int] = field(default_factory=list)  # epochs at which a killed run was resumed (resume.py)


def tensor_dataset(split: Split, indices: np.ndarray | None = None, training: bool = False) -> TensorDataset:
    """(index, uint8 image, label) triples; uint8 keeps host memory and host-to-device copies 4x smaller.

    ``training`` uses the split's loss targets where they differ from its labels (CheXpert's uncertain labels,
    ``training_targets``); evaluation always scores the hard labels.
    """
    idx = np.arange(len(split)) if indices is None else np.asarray(indices)
    targets = training_targets(split) if training else split.labels
    return TensorDataset(torch.from_numpy(idx), torch.from_numpy(split.images[idx]), torch.from_numpy(targets[idx]))


def training_targets(split: Split) -> np.ndarray:
    """Float targets for uncertain multi-label data: smoothed values (U-Ones/U-Zeros LSR) where a split has
    ``soft_labels``, NaN where its ``label_mask`` says "ignore" (U-Ignore), so the loss skips exactly those entries.
    Splits without them train on their integer labels unchanged."""
    soft, mask = getattr(split, "soft_labels", None), getattr(split, "label_mask", None)
    if soft is None and mask is None:
        return split.labels
    targets = (soft if soft is not None else split.labels).astype(np.float32)
    if mask is not None:
        targets = np.where(mask, targets, np.float32(np.nan))
    return targets


def trainer_kwargs(hw: HardwareConfig, spatial_dims: int) -> dict:
    """Lightning Trainer settings from the hardware section: DDP by a flag, mixed precision on GPU by default."""
    on_gpu = hw.accelerator in ("gpu", "cuda") or (hw.accelerator == "auto" and torch.cuda.is_available())
    precision = hw.precision
    if precision == "auto":
        precision = ("bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed") if on_gpu else "32-true"
    return dict(accelerator=hw.accelerator, devices=hw.devices, num_nodes=hw.num_nodes,
                strategy="ddp" if hw.ddp else "auto", precision=precision,
                deterministic="warn" if hw.deterministic else False,
                benchmark=not hw.deterministic and on_gpu)


def resolve_monitor(train: TrainConfig, task: str) -> str:
    """The validation metric that selects the model: ``train.monitor``, by default AUC, or Dice for segmentation."""
    segmentation = task == "segmentation"
    name = train.monitor or ("dice" if segmentation else "auc")
    if name != "loss" and (name in SEGMENTATION_METRICS) != segmentation:
        names = [*(SEGMENTATION_METRICS if segmentation else METRICS), "loss"]
        raise ConfigError(f"train.monitor: {name!r} is not a metric of {task} tasks; allowed: {allowed(names)}")
    return name


def _uses_channels_last(hw: HardwareConfig, backbone: Backbone) -> bool:
    on_gpu = hw.accelerator in ("gpu", "cuda") or (hw.accelerator == "auto" and torch.cuda.is_available())
    return hw.channels_last and on_gpu and backbone.spatial_dims == 2 and backbone.family != "vit"


def fine_tune(data: ImageDataset, train_indices: np.ndarray, backbone: Backbone, strategy: Strategy, view: str,
              train: TrainConfig, hardware: HardwareConfig, seed: int, workdir: Path,
              input_size: tuple[int, ...] | None = None, verbose: bool = False,
              normalisation: Normalisation = DEFAULT, frozen_features: bool = True,
              policy: TrainingPolicy = NO_POLICY, resize_mode: str = "linear",
              epoch_draw: EpochDraw | None = None) -> FineTuneResult:
    """Fine-tune ``backbone`` (already initialised) on ``train_indices`` of ``data.train``; returns test metrics.

    ``normalisation`` is the init's, for the data's channels (``Normalisation.for_channels``); 0.5 / 0.5 by default.
    ``resize_mode`` is how images are brought to ``input_size`` (``transforms.to_unit_range``).

    The caller seeds before building the backbone; this function re-seeds so the head, data order and
    augmentation are fixed by ``seed`` too. A backbone or prefix frozen for the whole run (``linear``, ``knn``,
    a depth range) is run once over the images and the rest trains on its cached output (``frozen.py``);
    ``frozen_features=False`` runs frozen parts every epoch as before, for comparisons (``knn`` has no other path).
    ``policy`` is the run's training policy (``policies/``): augmentation level, batch mixing, loss and sampler.
    ``epoch_draw`` (imbalance mode ``resample``) draws each epoch's examples from positions in ``train_indices``.
    """
    L.seed_everything(seed, workers=True, verbose=False)
    workdir = Path(workdir)
    strategy.prepare(backbone, view)
    monitor = resolve_monitor(train, data.task)
    channels_last = _uses_channels_last(hardware, backbone)
    segmentation = data.task == "segmentation"
    if segmentation:  # patches in, whole images scored by sliding window: ``input_size`` is the encoder's patch
        model, module = build_segmentation(data, backbone, strategy, view, train, monitor, channels_last,
                                           normalisation, augment=policy.augment(train.augment))
    else:
        model = Classifier(backbone, data.num_classes, dropout=train.dropout)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        preprocess = Preprocess(data.spatial_dims, size=input_size, augment=policy.augment(train.augment),
                                normalisation=normalisation, resize_mode=resize_mode)
        criterion = policy.criterion(data.task, data.train.labels[train_indices], data.num_classes)
        module = FineTuner(model, data.task, strategy, view, train, preprocess, channels_last, policy, criterion)
        spec = cached_input_spec(strategy, module, data, input_size or data.image_size, view, train, hardware,
                                 frozen_features)
        if spec is not None:
            return fine_tune_on_features(data, train_indices, module, spec, strategy, train, hardware, seed, workdir,
                                         view, verbose, epoch_draw)
    make_dataset = segmentation_dataset if segmentation else tensor_dataset
    train_set = make_dataset(data.train, train_indices) if segmentation else \
        tensor_dataset(data.train, train_indices, training=True)
    eval_batch = train.batch_size if segmentation else max(train.batch_size, 256)  # whole images are big
    return fit_and_test(module, model, data, train_set, make_dataset(data.val), make_dataset(data.test), eval_batch,
                        strategy, train, hardware, seed, monitor, workdir, verbose, epoch_draw)


def fit_and_test(module: FineTuner, model: torch.nn.Module, data: ImageDataset, train_set, val_set, test_set,
                 eval_batch: int, strategy: Strategy, train: TrainConfig, hardware: HardwareConfig, seed: int,
                 monitor: str, workdir: Path, verbose: bool, epoch_draw: EpochDraw | None = None) -> FineTuneResult:
    """The loop every trained strategy shares: seeded sampling, selection on val, one test on the best checkpoint.

    ``model`` is the whole network, for the parameter counts; ``module`` is what Lightning trains (the whole
    network, or only what follows a cached frozen part); the ``*_set`` datasets hold ``data``'s images or their
    cached features; ``epoch_draw`` replaces uniform sampling by a fresh class-capped draw every epoch.
    """
    generator = None  # an epoch draw is fixed by its epoch number, which Lightning restores on a resume
    if epoch_draw is not None:
        sampler = EpochSampler(epoch_draw, train.min_samples_per_epoch)
    else:
        per_epoch = max(len(train_set), train.min_samples_per_epoch)
        generator = torch.Generator().manual_seed(seed)
        sampler = module.policy.sampler(train_set.tensors[2].numpy(), per_epoch, generator)  # e.g. class-balanced
        if sampler is None:
            sampler = RandomSampler(train_set, num_samples=per_epoch, generator=generator)
    train_loader = DataLoader(train_set, batch_sampler=EveryBatch(sampler, train.batch_size, drop_last=False))

    mode = "min" if monitor in LOWER_IS_BETTER else "max"
    monitor = f"val/{monitor}"
    ckpt = ModelCheckpoint(dirpath=workdir / "checkpoints", monitor=monitor, mode=mode, save_top_k=1,
                           save_weights_only=True, filename="best")
    stamp = run_stamp(train, seed, len(train_set), len(val_set))
    resume = ResumeState(workdir, generator, stamp, hardware.resume_every_s)
    callbacks = [ckpt, *strategy.callbacks(), resume]
    if train.early_stopping_patience:
        callbacks.append(EarlyStopping(monitor, mode=mode, patience=train.early_stopping_patience,
                                       check_finite=False))
    point = resume_point(workdir, stamp)  # before the logger starts: it deletes the log the resume keeps
    if rank_zero_only.rank == 0:
        set_log_aside(workdir, point and point[1])
    trainer = L.Trainer(max_epochs=train.epochs, callbacks=callbacks, default_root_dir=workdir,
                        logger=CSVLogger(workdir, name="", version=""), enable_progress_bar=verbose,
                        enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=1,
                        **trainer_kwargs(hardware, data.spatial_dims))
    start = time.perf_counter()
    trainer.fit(module, train_loader, DataLoader(val_set, batch_size=eval_batch), ckpt_path=point and point[0],
                weights_only=True)  # the resume state holds tensors and plain data only
    fitted = time.perf_counter()
    if trainer.is_global_zero:
        merge_log(workdir)
    log = _read_log(workdir / "metrics.csv")
    best_epoch = _best_epoch(log, monitor, mode)
    val_metrics = _logged_val_metrics(log, best_epoch)
    trainer.test(module, DataLoader(test_set, batch_size=eval_batch), ckpt_path=ckpt.best_model_path or None,
                 verbose=False, weights_only=True)
    tested = time.perf_counter()
    if trainer.is_global_zero:
        shutil.rmtree(workdir / STATE_FILE.parent, ignore_errors=True)  # finished: nothing left to resume
        if not train.keep_checkpoints:
            shutil.rmtree(workdir / "checkpoints", ignore_errors=True)
    result = module.test_result or {}
    warnings = diagnose(log, monitor, data.task, data.val.labels, result.get("predictions", {}), data.class_names)
    return FineTuneResult(
        metrics=result.get("metrics", {}), per_class=result.get("per_class", {}), val_metrics=val_metrics,
        predictions=result.get("predictions", {}),
        timings={"fit_s": resume.earlier_s + fitted - start, "test_s": tested - fitted},
        best_epoch=best_epoch, epochs_run=trainer.current_epoch, resumed_from=resume.resumed_from,
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        total_params=sum(p.numel() for p in model.parameters()), warnings=warnings)


def _read_log(metrics_csv: Path) -> pd.DataFrame:
    """Lightning's per-epoch CSV log (empty when absent, e.g. on a non-zero DDP rank)."""
    return pd.read_csv(metrics_csv) if metrics_csv.exists() else pd.DataFrame()


def _best_epoch(log: pd.DataFrame, monitor: str, mode: str) -> int:
    """The epoch whose weights were tested, read back from the log (−1 if nothing was validated).

    A NaN score counts as the worst possible for Lightning's checkpoint callback, so when the monitored metric is
    NaN in every epoch the first validated epoch is kept (``diagnostics.undefined_selection`` says so).
    """
    if "epoch" not in log:
        return -1
    scores = log[["epoch", monitor]].dropna() if monitor in log else log.iloc[:0]
    if scores.empty:
        validated = log.dropna(subset=["val/loss"]) if "val/loss" in log else log.iloc[:0]
        return int(validated["epoch"].min()) if len(validated) else -1
    row = scores[monitor].idxmax() if mode == "max" else scores[monitor].idxmin()
    return int(scores.loc[row, "epoch"])


def _logged_val_metrics(log: pd.DataFrame, epoch: int) -> dict[str, float]:
    """The validation metrics logged at ``epoch``: those of the selected (tested) weights, not of the last epoch,
    which is what Lightning's ``callback_metrics`` hold after fit. Read from the log, which a resumed run holds
    whole (``resume.merge_log``); NaN where the metric was undefined; empty when nothing was validated."""
    columns = [c for c in log if c.startswith("val/")]
    rows = log.loc[log["epoch"] == epoch, columns].dropna(how="all") if "epoch" in log else log.iloc[:0]
    if rows.empty:
        return {}
    return {c.removeprefix("val/"): float(rows[c].iloc[-1]) for c in columns}
