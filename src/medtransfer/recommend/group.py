"""The probes of one (dataset, init, label fraction): per-unit probe, gradient profile and shift, within budget.

The init is built and fed exactly as the grid's first seed would be (``bench/runner.py::run_one``): same backbone,
weights, normalisation, input size, resize mode and labelled subset. Everything is seeded by that seed, so the
numbers repeat whenever the step count does (a binding budget stops on wall time, and says so).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import lightning as L
import numpy as np
import pandas as pd
import torch

from medtransfer.bench.executors import torch_threads
from medtransfer.bench.runner import Prepared
from medtransfer.config import DatasetConfig, ExperimentConfig, InitConfig
from medtransfer.data.transforms import Preprocess
from medtransfer.finetune.module import FineTuner
from medtransfer.finetune.strategies.end_to_end import EndToEnd
from medtransfer.finetune.train import resolve_monitor, training_targets
from medtransfer.models.factory import create_backbone
from medtransfer.models.heads import Classifier
from medtransfer.models.zoo import load_init
from medtransfer.recommend.candidates import Candidate
from medtransfer.recommend.combine import borda, strategy_signals
from medtransfer.recommend.cost import GroupCost
from medtransfer.recommend.features import unit_features
from medtransfer.recommend.probe import unit_probe_scores
from medtransfer.recommend.rgn import gradient_profile
from medtransfer.recommend.shift import unit_shifts


PLANNED_SHARE = 0.9  # steps stop at 90 % of the budget: the rest absorbs timing noise of the last step and shift pass


@dataclass
class GroupResult:
    table: pd.DataFrame  # ``combine.borda``'s ranked rows
    signals: dict  # per-unit values and how they were obtained, for recommendations.json
    cost_s: float  # wall time of this group's probes
    grid_cost_s: float


def build_backbone(cfg: ExperimentConfig, prepared: Prepared, label: str):
    """A fresh backbone of the experiment for dataset ``label``, as ``run_one`` builds it (random weights)."""
    data = prepared.data[label]
    return create_backbone(cfg.backbone.name, data.in_chans, prepared.input_size[label], cfg.backbone.small_stem,
                           spatial_dims=data.spatial_dims)


def _device(cfg: ExperimentConfig) -> torch.device:
    gpu = cfg.hardware.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return torch.device("cuda" if gpu else "cpu")


def probe_group(cfg: ExperimentConfig, prepared: Prepared, ds_cfg: DatasetConfig, label: str, init: InitConfig,
                fraction: float, candidates: list[Candidate], cost: GroupCost, budget: float,
                steps: int) -> GroupResult:
    """Probe ``init`` on dataset ``label`` at ``fraction``, within ``budget`` x ``cost``; on the GPU when there is
    one, in float32, with the run's CPU thread count."""
    with torch_threads(cfg.hardware.cpus_per_run):
        return _probe_group(cfg, prepared, ds_cfg, label, init, fraction, candidates, cost, budget, steps)


def _probe_group(cfg, prepared, ds_cfg, label, init, fraction, candidates, cost, budget, steps) -> GroupResult:
    start = time.perf_counter()
    seed, data, device = cfg.seeds[0], prepared.data[label], _device(cfg)
    monitor = resolve_monitor(cfg.train, data.task)
    L.seed_everything(seed, workers=True, verbose=False)
    backbone = build_backbone(cfg, prepared, label)
    normalisation = prepared.init_normalisation[init.name].for_channels(data.in_chans)
    if prepared.init_files[init.name] is not None:
        load_init(backbone, prepared.init_files[init.name], normalisation=prepared.init_normalisation[init.name])
    view = cfg.backbone.view or backbone.default_view
    preprocess = Preprocess(data.spatial_dims, size=prepared.input_size[label], augment=cfg.train.augment,
                            normalisation=normalisation, resize_mode=ds_cfg.resize_mode).to(device)
    backbone.to(device)
    indices = prepared.subsets[label, fraction, seed]

    phases = {"setup": time.perf_counter() - start}  # seconds per phase, to see where the budget went
    train_before = unit_features(backbone, data.train.images[indices], preprocess, view)
    unit_seconds = np.zeros(len(backbone.view(view)))
    val_start = time.perf_counter()
    val_before = unit_features(backbone, data.val.images, preprocess, view, unit_seconds)
    reserve_s = 2 * (time.perf_counter() - val_start)  # the shift's own pass over val, twice for safety: held back
    step_share = {c.label: c.step_share(unit_seconds) for c in candidates}
    phases["features"] = time.perf_counter() - start - phases["setup"]
    probe = unit_probe_scores(train_before, data.train.labels[indices], val_before, data.val.labels, data.task,
                              data.num_classes, monitor, seed)
    phases["probe"] = time.perf_counter() - start - sum(phases.values())

    model = Classifier(backbone, data.num_classes, dropout=cfg.train.dropout).to(device)
    module = FineTuner(model, data.task, EndToEnd(), view, cfg.train, preprocess)
    targets = torch.from_numpy(np.asarray(training_targets(data.train)[indices]))
    targets = (targets.float() if data.task == "multilabel" else targets.long()).to(device)
    images = torch.from_numpy(data.train.images[indices]).to(device)

    def over_budget(seconds_per_step: float) -> bool:  # would one more step and the shift's pass overrun it?
        spent = time.perf_counter() - start + seconds_per_step + reserve_s
        return spent > PLANNED_SHARE * budget * cost.total(seconds_per_step, step_share)

    profile = gradient_profile(module, view, images, targets, cfg.train.lr, cfg.train.batch_size, steps, seed,
                               stop=over_budget)
    phases["gradient"] = time.perf_counter() - start - sum(phases.values())
    shift = unit_shifts(val_before, unit_features(backbone, data.val.images, preprocess, view))
    table = borda(strategy_signals(candidates, probe, profile.rgn, shift), monitor)
    phases["shift"] = time.perf_counter() - start - sum(phases.values())
    cost_s, grid_cost_s = time.perf_counter() - start, cost.total(profile.seconds_per_step, step_share)
    signals = {"monitor": monitor, "view": view, "probe": probe.tolist(), "rgn": profile.rgn.tolist(),
               "shift": shift.tolist(), "steps": profile.steps, "stopped_by_budget": profile.stopped_early,
               "seconds_per_step": profile.seconds_per_step, "cost_s": cost_s, "grid_cost_s": grid_cost_s,
               "grid_cost": cost.source, "over_budget": cost_s > budget * grid_cost_s, "phases_s": phases,
               "n_train": int(len(indices)), "seed": seed,
               "candidates": {c.label: {"trained": list(c.trained), "readout": c.readout,
                                        "trainable_params": c.trainable_params} for c in candidates}}
    return GroupResult(table, signals, cost_s, grid_cost_s)
