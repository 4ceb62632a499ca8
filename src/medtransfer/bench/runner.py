"""Running an experiment: validate everything, pre-train what the inits need, then fine-tune every unfinished run.

Bad input fails in ``prepare`` — before any training — with one clear error: missing files, wrong channel counts,
NaN labels, an empty class after subsetting, a checkpoint that does not fit. Each finished run is committed to the
SQLite store the moment it ends, so a crash or Ctrl-C loses at most the run in flight, which the next invocation
continues from its last resume state (``finetune/resume.py``); finished runs are never run twice.
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
import warnings
from collections import deque
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
from lightning.pytorch.utilities import rank_zero_only
from tqdm.auto import tqdm

from medtransfer.bench.claims import LEASE_S, LeaseKeeper, pass_started, pretraining_lock, process_owner
from medtransfer.bench.executors import torch_threads
from medtransfer.bench.fusion import check_fusions, identify_fusions, inits_to_resolve, run_fusion
from medtransfer.bench.grid import RunSpec, dataset_labels, expand
from medtransfer.bench.store import ClaimLost, ResultStore
from medtransfer.bench.store_faults import stop_if_disk_full
from medtransfer.config import DatasetConfig, ExperimentConfig, InitConfig, PretrainConfig
from medtransfer.config_files import load_config
from medtransfer.data import ImageDataset, label_fraction_indices, load_dataset
from medtransfer.data.imbalance import class_counts, plan_imbalance
from medtransfer.data.normalisation import DEFAULT, Normalisation
from medtransfer.errors import ConfigError
from medtransfer.evaluate.rare import rare_class_metrics
from medtransfer.finetune.frozen import check_hardware
from medtransfer.finetune.policies.checks import check_policies
from medtransfer.finetune.strategies.knn import KNN
from medtransfer.finetune.segmentation import build_segmentation, segmentation_input_size
from medtransfer.finetune.train import fine_tune, resolve_monitor
from medtransfer.interrupts import Interrupted
from medtransfer.models.checkpoint import file_normalisation, load_backbone_weights, sha256_file
from medtransfer.models.factory import create_backbone
from medtransfer.models.zoo import init_normalisation, load_init, resolve_weights
from medtransfer.pretrain.run import PretrainPlan, default_output

CLASS_COUNTING = ("class_weights", "balanced_sampler")  # policies that read the subset's class counts
WAIT_POLL_S = 2.0  # how often runs held by other processes are checked at the end of a pass
log = logging.getLogger(__name__)


@dataclass
class Prepared:
    data: dict[str, ImageDataset] = field(default_factory=dict)
    input_size: dict[str, tuple[int, ...]] = field(default_factory=dict)
    subsets: dict[tuple[str, float, int], np.ndarray] = field(default_factory=dict)
    init_files: dict[str, Path | None] = field(default_factory=dict)
    init_sha256: dict[str, str | None] = field(default_factory=dict)
    init_normalisation: dict[str, Normalisation] = field(default_factory=dict)  # per channel of the init's weights
    pretrain_plans: dict[str, PretrainPlan] = field(default_factory=dict)  # checked, run by run_pretrainings


@dataclass
class RunSummary:
    folder: Path
    total: int
    skipped: int
    done: int
    failed: list[str]


def quiet_lightning() -> None:
    """Lightning's per-run banners and tips drown a grid's progress bar; errors and warnings that matter stay."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*(LeafSpec|does not have many workers|litlogger|TPU|"
                                              "no `val_dataloader`|exists and is not empty).*")


def _input_size(cfg_resize: int | None, data: ImageDataset) -> tuple[int, ...]:
    return (cfg_resize,) * data.spatial_dims if cfg_resize else data.image_size


def dataset_input_size(cfg: ExperimentConfig, ds_cfg: DatasetConfig, data: ImageDataset) -> tuple[int, ...]:
    return (segmentation_input_size(data, ds_cfg.resize, cfg.train.segmentation)
            if data.task == "segmentation" else _input_size(ds_cfg.resize, data))


def _pretrain_config(init: InitConfig) -> PretrainConfig:
    return load_config(init.pretrain, PretrainConfig) if isinstance(init.pretrain, Path) else init.pretrain


def _build(cfg: ExperimentConfig, prepared: Prepared, label: str):
    data = prepared.data[label]
    return create_backbone(cfg.backbone.name, data.in_chans, prepared.input_size[label], cfg.backbone.small_stem,
                           spatial_dims=data.spatial_dims)


def _check_fits(cfg: ExperimentConfig, path: Path, source: str, prepared: Prepared) -> None:
    """Load the init file into a fresh backbone for every dataset, so misfits surface before fine-tuning."""
    for label in prepared.data:
        load_init(_build(cfg, prepared, label), path, source)


def prepare(cfg: ExperimentConfig) -> Prepared:
    """Everything that can be checked without training, checked; no pre-training or fine-tuning happens here."""
    prepared = Prepared()
    for ds_cfg, label in zip(cfg.datasets, dataset_labels(cfg.datasets)):
        data = load_dataset(ds_cfg.name, **ds_cfg.options)
        prepared.data[label] = data
        prepared.input_size[label] = dataset_input_size(cfg, ds_cfg, data)
        monitor = resolve_monitor(cfg.train, data.task)
        probe = _build(cfg, prepared, label)
        view = cfg.backbone.view or probe.default_view
        probe.view(view)  # unknown view names fail here, whatever the strategies
        for strategy in cfg.strategies:  # an unknown view or a range selecting no unit fails here, not mid-grid
            backbone = _build(cfg, prepared, label)
            strategy.prepare(backbone, view)
            check_hardware(strategy, cfg.hardware)
            if data.task == "segmentation":  # e.g. fpn on a truncated encoder, bce on three classes
                build_segmentation(data, backbone, strategy, view, cfg.train, monitor, channels_last=False)
        check_policies(cfg, label, data)
        for fraction in cfg.label_fractions:
            for seed in cfg.seeds:
                prepared.subsets[label, fraction, seed] = label_fraction_indices(
                    data.train.labels, data.task, fraction, seed)
                for setting in cfg.imbalance.settings():  # an unreachable ratio fails here, naming the largest
                    imbalance_plan(cfg, label, data, prepared.subsets[label, fraction, seed], fraction, seed, setting)
        if cfg.imbalance.mode == "resample" and any(isinstance(s, KNN) for s in cfg.strategies):
            raise ConfigError("imbalance.mode: 'resample' draws examples per epoch, and strategy knn has no epochs; "
                              "allowed with knn: subsample")
        counting = sorted({p.name for policy in cfg.policies for p in policy.parts if p.name in CLASS_COUNTING})
        if cfg.imbalance.mode == "resample" and any(cfg.imbalance.ratios) and counting:
            raise ConfigError(f"imbalance.mode: 'resample' draws each epoch's classes itself; policies {counting} "
                              "would weigh or sample the whole labelled subset instead; allowed with them: subsample")
    for init in inits_to_resolve(cfg):  # fusions are checked below, once their members are resolved
        if init.checkpoint is not None or init.zoo is not None or init.timm is not None:
            path, source = resolve_weights(init.zoo, init.timm, init.checkpoint, key=f"inits ({init.name})")
            _check_fits(cfg, path, f"inits ({init.name}): {source}", prepared)
            prepared.init_files[init.name] = path
            prepared.init_sha256[init.name] = sha256_file(path)
            prepared.init_normalisation[init.name] = init_normalisation(
                init.zoo, init.timm, path if init.checkpoint else None, init.normalisation)
        elif init.pretrain is not None:
            pcfg = _pretrain_config(init)
            if (pcfg.backbone.name, pcfg.backbone.small_stem) != (cfg.backbone.name, cfg.backbone.small_stem):
                raise ConfigError(f"inits ({init.name}): pre-training uses backbone {pcfg.backbone.name} "
                                  f"(small_stem={pcfg.backbone.small_stem}) but the experiment fine-tunes "
                                  f"{cfg.backbone.name} (small_stem={cfg.backbone.small_stem}); make them equal")
            # the same checks ``pretrain`` makes, on the same plan (and dataset) that runs it later
            plan = PretrainPlan(pcfg, where=f"inits ({init.name}): ").check()
            pretrained = plan.backbone()
            for label in prepared.data:  # e.g. grey pre-training data for RGB images: refused before pre-training
                load_backbone_weights(_build(cfg, prepared, label), pretrained.model.state_dict(),
                                      f"inits ({init.name}): pre-training on {pcfg.data.name}")
            prepared.pretrain_plans[init.name] = plan
        else:
            prepared.init_files[init.name] = prepared.init_sha256[init.name] = None
            prepared.init_normalisation[init.name] = DEFAULT
    check_fusions(cfg, prepared)
    identify_fusions(cfg, prepared)
    return prepared


def run_normalisation(prepared: Prepared, spec: RunSpec) -> Normalisation:
    """The init's normalisation for the channels of the run's dataset (0.5 / 0.5 for a random init)."""
    return prepared.init_normalisation[spec.init.name].for_channels(prepared.data[spec.dataset_label].in_chans)


def run_identity(prepared: Prepared, spec: RunSpec) -> tuple[str | None, bool, Normalisation, int, tuple]:
    """What identifies a run besides its config: the init's content hash, whether it segments (which settings act on
    it), the normalisation it is fed, its number of labelled images and a multi-label dataset's labels;
    ``RunSpec.run_id``/``resolved`` take these, in every executor."""
    data = prepared.data[spec.dataset_label]
    return (prepared.init_sha256[spec.init.name], data.task == "segmentation", run_normalisation(prepared, spec),
            len(prepared.subsets[spec.dataset_label, spec.fraction, spec.seed]),
            tuple(data.class_names) if data.task == "multilabel" else ())


def run_pretrainings(cfg: ExperimentConfig, prepared: Prepared, folder: Path, verbose: bool) -> None:
    """Run (or reuse) each pre-training init inside the experiment folder; its checkpoint hash keys the runs."""
    for name, plan in prepared.pretrain_plans.items():
        output = plan.cfg.output or default_output(plan.cfg, folder / "pretrain")
        # DDP ranks > 0 join rank 0's pre-training, so only rank 0 may wait for another process's
        # cpus_per_run threads, as a Ray pre-training task has: on CPU the thread count changes the weights
        with torch_threads(cfg.hardware.cpus_per_run), (pretraining_lock(output) if rank_zero_only.rank == 0
                                                        else nullcontext()):
            checkpoint = plan.run(output, verbose=verbose)
        _check_fits(cfg, checkpoint, str(checkpoint), prepared)
        prepared.init_files[name] = checkpoint
        prepared.init_sha256[name] = sha256_file(checkpoint)
        prepared.init_normalisation[name] = file_normalisation(checkpoint)
    identify_fusions(cfg, prepared)


def imbalance_plan(cfg: ExperimentConfig, label: str, data: ImageDataset, subset: np.ndarray, fraction: float,
                   seed: int, setting):
    """The run's training data under its imbalance ``setting`` (None: natural ratio), as ``run_one`` trains it."""
    return plan_imbalance(data.train.labels, data.task, subset, seed, setting, cfg.imbalance.rare_class,
                          list(data.class_names), f"{label} at label fraction {fraction:g}, seed {seed}")


def run_one(cfg: ExperimentConfig, spec: RunSpec, prepared: Prepared, workdir: Path, verbose: bool):
    if spec.init.fuse:
        return run_fusion(cfg, spec, prepared, workdir, verbose)
    data = prepared.data[spec.dataset_label]
    input_size = prepared.input_size[spec.dataset_label]
    L.seed_everything(spec.seed, workers=True, verbose=False)  # fixes the head and any random init
    backbone = create_backbone(cfg.backbone.name, data.in_chans, input_size, cfg.backbone.small_stem,
                               spatial_dims=data.spatial_dims)
    init_file = prepared.init_files[spec.init.name]
    if init_file is not None:
        load_init(backbone, init_file, normalisation=prepared.init_normalisation[spec.init.name])
    view = cfg.backbone.view or backbone.default_view
    indices = prepared.subsets[spec.dataset_label, spec.fraction, spec.seed]
    plan = imbalance_plan(cfg, spec.dataset_label, data, indices, spec.fraction, spec.seed, spec.imbalance)
    indices = indices if plan is None else plan.indices
    with torch_threads(cfg.hardware.cpus_per_run):
        result = fine_tune(data, indices, backbone, spec.strategy, view, cfg.train, cfg.hardware, spec.seed, workdir,
                           input_size=input_size, verbose=verbose, normalisation=run_normalisation(prepared, spec),
                           policy=spec.policy, resize_mode=spec.dataset.resize_mode,
                           **({"epoch_draw": plan.draw} if plan and plan.draw else {}))
    result.imbalance = plan and plan.record
    if plan is not None:
        result.metrics.update(rare_class_metrics(result.per_class, plan.record))
    return result, indices


def run_extra(result, indices: np.ndarray, data: ImageDataset, init_file: Path | None) -> dict:
    """What a run stores beside its metrics: schedule outcome, subset, parameter counts, init file, and the epochs
    a killed run was resumed at (``finetune/resume.py``)."""
    return {"best_epoch": result.best_epoch, "epochs_run": result.epochs_run, "n_train": int(len(indices)),
            "class_counts": class_counts(result.imbalance, data.train.labels, data.task, indices),
            "class_names": list(data.class_names),
            "trainable_params": result.trainable_params, "total_params": result.total_params,
            "init_file": str(init_file or ""), "warnings": result.warnings,
            **({"imbalance": result.imbalance} if result.imbalance else {}),
            **({"resumed_from_epoch": result.resumed_from} if result.resumed_from else {})}


def run_experiment(cfg: ExperimentConfig, folder: str | Path | None = None, verbose: bool = False,
                   fail_fast: bool = False, progress: bool = True, lease_s: float = LEASE_S,
                   ray_connection=None) -> RunSummary:
    """Run every unfinished run of ``cfg`` into ``folder`` (default: ``cfg.output`` or runs/<name>).

    Runs are claimed in the store, so any number of processes on one folder share the grid: a run another live
    process holds is left to it ("running elsewhere") and waited for at the end, and taken over if that process dies.
    ``ray_connection``: a ``RayConnection`` already started for this grid's Ray executor (else one is started here).
    """
    folder = Path(folder or cfg.output or Path("runs") / cfg.name)
    if not verbose:
        quiet_lightning()
    if cfg.hardware.executor == "ray":
        from medtransfer.bench.ray_executor import run_on_ray
        return run_on_ray(cfg, folder, verbose=verbose, fail_fast=fail_fast, progress=progress, lease_s=lease_s,
                          connection=ray_connection)
    prepared = prepare(cfg)
    store = ResultStore(folder)
    run_pretrainings(cfg, prepared, folder, verbose)
    specs = expand(cfg)
    writer = rank_zero_only.rank == 0  # under DDP every process runs the grid; only rank 0 writes results
    ids = [spec.run_id(cfg, *run_identity(prepared, spec)) for spec in specs]
    todo = deque((spec, rid) for spec, rid in zip(specs, ids) if store.status(rid) != "done")
    n_todo = len(todo)
    owner, since = process_owner(), pass_started()
    failed: list[str] = []
    finished_elsewhere = 0
    held: list[tuple[RunSpec, str]] = []
    waited = False
    bar = tqdm(total=n_todo, desc=cfg.name, unit="run", disable=not progress or not writer)
    with LeaseKeeper(store, owner, lease_s) as leases:
        while todo or held:
            if not todo:  # only runs other processes hold are left: wait for them to end or their owner to die
                if not waited and writer:
                    tqdm.write(f"waiting for {len(held)} run(s) running elsewhere", file=sys.stderr)
                waited = True
                time.sleep(min(lease_s / 4, WAIT_POLL_S))
                todo.extend(held)
                held.clear()
            spec, run_id = todo.popleft()
            labels = spec.labels()
            if writer:
                outcome = store.claim(run_id, spec.resolved(cfg, *run_identity(prepared, spec)), labels, owner,
                                      lease_s, since)
            else:  # other DDP ranks follow rank 0, which claims every run when it is the folder's only process
                outcome = "done" if store.status(run_id) == "done" else "claimed"
            if outcome == "held":
                held.append((spec, run_id))
                continue
            if outcome != "claimed":
                bar.update()
            if outcome == "done":  # finished meanwhile by another process sharing the folder
                finished_elsewhere += 1
                continue
            if outcome == "ended":
                failed.append(f"{labels}: failed in another process during this pass (see its error in the store)")
                continue
            bar.set_postfix_str(f"{labels['init']} | {labels['strategy']} | {labels['fraction']:g} | seed {spec.seed}")
            if writer:
                leases.hold(run_id)
            try:
                result, indices = run_one(cfg, spec, prepared, store.run_dir(run_id), verbose)
            except (KeyboardInterrupt, Interrupted) as err:
                if writer:
                    store.fail(run_id, f"interrupted by {err or 'the user'}", status="interrupted", owner=owner)
                raise
            except Exception as err:  # noqa: BLE001 - one failed run must not stop the grid unless asked to
                if writer:
                    store.fail(run_id, "".join(traceback.format_exception_only(err)).strip() + "\n"
                               + traceback.format_exc(), owner=owner)
                failed.append(f"{labels}: {err}")
                if fail_fast:
                    raise
                stop_if_disk_full(store.folder, err)  # else every later run would fail the same way
                continue
            finally:
                leases.release(run_id)
                bar.update()
            if writer:
                data = prepared.data[spec.dataset_label]
                store.save_predictions(run_id, **result.predictions)
                try:
                    store.finish(run_id, result.metrics, result.per_class, result.val_metrics, result.timings,
                                 extra=run_extra(result, indices, data, prepared.init_files[spec.init.name]),
                                 owner=owner)
                except ClaimLost as err:  # stalled past the lease; the process that took the run over stores it
                    log.warning("%s", err)
                    finished_elsewhere += 1
    bar.close()
    skipped = len(specs) - n_todo + finished_elsewhere
    return RunSummary(folder, len(specs), skipped, len(specs) - skipped - len(failed), failed)
