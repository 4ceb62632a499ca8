"""Fusion inits in a grid: their members resolved like any init, checked before training, and identified by content.

A member is another init of the experiment named by its ``label`` (its pre-training then runs once and its own
runs are what the report compares the fusion with), or an inline ``init``, prepared like an experiment init under
the name ``FUSION[k]``. A fusion's content hash covers, per member, the weights' sha256, their normalisation and the
member's own strategy (none: the run's, which the run id holds anyway), plus ``how`` and ``dropout``; it stands in
``Prepared.init_sha256`` where a single init's file hash stands, so the run id needs nothing else.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import lightning as L
import numpy as np

from medtransfer.bench.executors import torch_threads
from medtransfer.bench.grid import RunSpec, fusion_member_names as member_names
from medtransfer.config import ExperimentConfig, InitConfig
from medtransfer.data.normalisation import DEFAULT
from medtransfer.errors import ConfigError, allowed
from medtransfer.finetune.fusion import check_member_strategy, fine_tune_fusion
from medtransfer.models.checkpoint import read_metadata
from medtransfer.models.factory import create_backbone
from medtransfer.models.zoo import load_init


def fusions(cfg: ExperimentConfig) -> list[InitConfig]:
    return [init for init in cfg.inits if init.fuse]


def inits_to_resolve(cfg: ExperimentConfig) -> list[InitConfig]:
    """Every init whose weights ``prepare`` resolves: the experiment's single inits and the fusions' inline members."""
    inline = [m.init.model_copy(update={"label": name})
              for fusion in fusions(cfg) for m, name in zip(fusion.fuse, member_names(fusion)) if m.init is not None]
    return [init for init in cfg.inits if not init.fuse] + inline


def check_fusions(cfg: ExperimentConfig, prepared) -> None:
    """What makes a fusion unrunnable, refused before any training: a member label naming no init, segmentation,
    training policies or imbalance ratios (its loop applies neither), a strategy a member cannot train under, members
    trained on different input channels or sizes. Any executor runs fusions (a Ray task gets every member's file)."""
    singles = [init.name for init in cfg.inits if not init.fuse]
    for fusion in fusions(cfg):
        where = f"inits ({fusion.name})"
        for k, member in enumerate(fusion.fuse):
            if member.label is not None and member.label not in singles:
                raise ConfigError(f"{where}.fuse[{k}].label: {member.label!r} is not an init of this experiment; "
                                  f"allowed: {allowed(singles)}")
        policies = [p.label() for p in cfg.policies if not p.is_none]
        if policies:  # a fusion trains through its own loop, which applies no training policy
            raise ConfigError(f"{where}: fusions train without training policies; policies {policies} would label "
                              "runs they never acted on (run the fusion in an experiment with policies: [none])")
        ratios = [r for r in cfg.imbalance.ratios if r is not None]
        if ratios:  # a fusion trains on the label-fraction subset through its own loop, which draws no ratio
            raise ConfigError(f"{where}: fusions train at the natural class ratio only; imbalance.ratios {ratios} "
                              "would label runs they never acted on (run the fusion with imbalance: [null])")
        for label, data in prepared.data.items():
            if data.task == "segmentation":
                raise ConfigError(f"{where}: fusion is for classification; dataset {label} is a segmentation task "
                                  "(fuse decoders by hand, or drop the fusion for this dataset)")
        for k, member in enumerate(fusion.fuse):
            if member.strategy is None:  # the run's strategies, each already prepared on every dataset
                for i, strategy in enumerate(cfg.strategies):
                    check_member_strategy(strategy, f"{where}.fuse[{k}] under strategies[{i}]")
                continue
            for label, data in prepared.data.items():  # e.g. a range selecting no unit fails here
                backbone = create_backbone(cfg.backbone.name, data.in_chans, prepared.input_size[label],
                                           cfg.backbone.small_stem, spatial_dims=data.spatial_dims)
                member.strategy.prepare(backbone, cfg.backbone.view or backbone.default_view)
        _check_same_input(where, member_names(fusion), prepared)
        prepared.init_files[fusion.name] = None
        prepared.init_normalisation[fusion.name] = DEFAULT  # each member is fed its own; see run_fusion


def _native_input(name: str, prepared) -> tuple[int, tuple[int, ...]] | None:
    """(channels, size) of the images a member's weights were trained on, where recorded: a pre-training's data,
    a medtransfer checkpoint's sidecar (zoo entries included); None for random weights and foreign files."""
    if name in prepared.pretrain_plans:
        plan = prepared.pretrain_plans[name]
        return plan.data.in_chans, tuple(plan.input_size)
    path = prepared.init_files.get(name)
    recorded = read_metadata(path).get("backbone", {}) if path is not None else {}
    if "in_chans" in recorded and "input_size" in recorded:
        return int(recorded["in_chans"]), tuple(recorded["input_size"])
    return None


def _check_same_input(where: str, names: list[str], prepared) -> None:
    known = [(name, found) for name in names if (found := _native_input(name, prepared)) is not None]
    for name, (chans, size) in known[1:]:
        first, (first_chans, first_size) = known[0]
        if (chans, size) != (first_chans, first_size):
            raise ConfigError(
                f"{where}: member {name} was trained on {chans}-channel {'x'.join(map(str, size))} images but "
                f"member {first} on {first_chans}-channel {'x'.join(map(str, first_size))}; members of a fusion "
                "must share input channels and size")


def identify_fusions(cfg: ExperimentConfig, prepared) -> None:
    """Set each fusion's content hash once all its members' weights are known (after their pre-trainings)."""
    for fusion in fusions(cfg):
        names = member_names(fusion)
        if all(name in prepared.init_sha256 for name in names):
            prepared.init_sha256[fusion.name] = fusion_sha256(fusion, names, prepared)


def fusion_sha256(fusion: InitConfig, names: list[str], prepared) -> str:
    identity = {"how": fusion.how or "concat", "dropout": fusion.dropout, "members": [
        {"sha256": prepared.init_sha256[name], "normalisation": prepared.init_normalisation[name].to_dict(),
         "strategy": None if m.strategy is None else m.strategy.model_dump(mode="json")}
        for m, name in zip(fusion.fuse, names)]}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def run_fusion(cfg: ExperimentConfig, spec: RunSpec, prepared, workdir: Path, verbose: bool):
    """``run_one`` for a fusion init: every member built and initialised (in member order, after the run's seed),
    fed its own normalisation and the dataset's resize mode, trained under its own strategy or the run's."""
    fusion, data = spec.init, prepared.data[spec.dataset_label]
    input_size = prepared.input_size[spec.dataset_label]
    L.seed_everything(spec.seed, workers=True, verbose=False)
    members, normalisations = [], []
    for name in member_names(fusion):
        backbone = create_backbone(cfg.backbone.name, data.in_chans, input_size, cfg.backbone.small_stem,
                                   spatial_dims=data.spatial_dims)
        if prepared.init_files[name] is not None:
            load_init(backbone, prepared.init_files[name], normalisation=prepared.init_normalisation[name])
        members.append(backbone)
        normalisations.append(prepared.init_normalisation[name].for_channels(data.in_chans))
    strategies = [m.strategy or spec.strategy for m in fusion.fuse]
    view = cfg.backbone.view or members[0].default_view
    indices: np.ndarray = prepared.subsets[spec.dataset_label, spec.fraction, spec.seed]
    dropout = cfg.train.dropout if fusion.dropout is None else fusion.dropout
    with torch_threads(cfg.hardware.cpus_per_run):
        result = fine_tune_fusion(data, indices, members, strategies, normalisations, fusion.how or "concat",
                                  dropout, view, cfg.train, cfg.hardware, spec.seed, workdir, input_size, verbose,
                                  resize_mode=spec.dataset.resize_mode)
    return result, indices
