"""``recommend``: rank an experiment's fine-tuning strategies for every (dataset, init, label fraction) from cheap
probes, before (or after) its grid runs. The signals are in ``probe.py``, ``rgn.py`` and ``shift.py``, their fixed
combination in ``combine.py``, the cost accounting in ``cost.py``.
"""

from __future__ import annotations

import time
from collections import defaultdict
from functools import partial
from pathlib import Path

import pandas as pd

from medtransfer.bench.grid import RunSpec, dataset_labels, expand
from medtransfer.bench.runner import (Prepared, imbalance_plan, prepare, quiet_lightning, run_identity,
                                     run_pretrainings)
from medtransfer.config import ExperimentConfig
from medtransfer.errors import ConfigError
from medtransfer.recommend.candidates import Candidate, describe, ranked_strategies
from medtransfer.recommend.cost import GroupCost, measured_fit_seconds, steps_per_run
from medtransfer.recommend.group import build_backbone, probe_group
from medtransfer.recommend.output import COLUMNS, write_outputs

DEFAULT_STEPS = 300  # "a few hundred" steps of the gradient profile (Lee et al. 2023), cut to the budget
DEFAULT_BUDGET = 0.10  # probes may cost this share of the ranked grid's fine-tuning


def check_arguments(budget: float, steps: int) -> None:
    if not budget > 0:
        raise ConfigError(f"budget: {budget!r} is not a share of the grid's cost; allowed: a number > 0, e.g. 0.1")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps: {steps!r} is not a number of training steps; allowed: an integer >= 1")


def _refuse_segmentation(cfg: ExperimentConfig, prepared: Prepared) -> None:
    for label, data in prepared.data.items():
        if data.task == "segmentation":
            raise ConfigError(f"datasets ({label}): a segmentation task; recommend ranks classification strategies "
                              "only (its probes score a linear classifier); allowed: classification datasets")


def _group_costs(cfg: ExperimentConfig, prepared: Prepared, strategies, folder: Path) -> dict:
    """(dataset label, init name, fraction) -> the grid cost of the ranked strategies' runs there."""
    grid = cfg.model_copy(update={"strategies": strategies})
    measured = measured_fit_seconds(folder)
    runs: dict[tuple, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    steps: dict[str, int] = {}
    for spec in expand(grid):
        if not spec.init.fuse:
            run_id = spec.run_id(grid, *run_identity(prepared, spec))
            runs[spec.dataset_label, spec.init.name, spec.fraction][spec.strategy.label()].append(run_id)
            steps[run_id] = _training_steps(cfg, prepared, spec)
    return {key: GroupCost(dict(by_strategy), {i: steps[i] for ids in by_strategy.values() for i in ids},
                           {i: measured[i] for ids in by_strategy.values() for i in ids if i in measured})
            for key, by_strategy in runs.items()}


def _training_steps(cfg: ExperimentConfig, prepared: Prepared, spec: RunSpec) -> int:
    """A run's training steps, from the data it trains on: the labelled subset, or at an imbalance ratio its thinned
    subset (``subsample``) or its per-epoch draw (``resample``)."""
    data, subset = prepared.data[spec.dataset_label], prepared.subsets[spec.dataset_label, spec.fraction, spec.seed]
    plan = imbalance_plan(cfg, spec.dataset_label, data, subset, spec.fraction, spec.seed, spec.imbalance)
    n_train = len(subset) if plan is None else plan.draw.size if plan.draw is not None else len(plan.indices)
    return steps_per_run(n_train, cfg.train.epochs, cfg.train.batch_size, cfg.train.min_samples_per_epoch)


def recommend(cfg: ExperimentConfig, folder: str | Path | None = None, budget: float = DEFAULT_BUDGET,
              steps: int = DEFAULT_STEPS, all_depths: bool = False, verbose: bool = False) -> pd.DataFrame:
    """Rank the strategies (``candidates.ranked_strategies``) for every (dataset, init, fraction) of ``cfg``;
    writes ``recommendations.csv`` and ``recommendations.json`` into ``folder`` (default: the experiment's
    folder) and returns the CSV's rows. The experiment's pre-trainings run (or are reused) exactly as ``run`` does
    them; their time is reported apart from the probes', which stay within ``budget`` x the grid's cost.
    Fusion inits are skipped (their members are ranked where they are inits of the experiment)."""
    check_arguments(budget, steps)
    folder = Path(folder or cfg.output or Path("runs") / cfg.name)
    if not verbose:
        quiet_lightning()
    prepared = prepare(cfg)
    _refuse_segmentation(cfg, prepared)
    inits = [init for init in cfg.inits if not init.fuse]
    skipped = [{"init": init.name, "why": "a fusion: probes read one backbone's units"}
               for init in cfg.inits if init.fuse]
    if not inits:
        raise ConfigError(f"inits: {[i.name for i in cfg.inits]} are all fusions, which recommend cannot probe; "
                          "allowed: add their members as inits of their own")
    strategies = ranked_strategies(cfg.strategies, all_depths)
    candidates: dict[str, list[Candidate]] = {}
    for label, data in prepared.data.items():  # a range selecting no unit fails here, before any pre-training
        build = partial(build_backbone, cfg, prepared, label)
        view = cfg.backbone.view or build().default_view
        candidates[label] = [describe(s, build, view, data.num_classes) for s in strategies]
    start = time.perf_counter()
    run_pretrainings(cfg, prepared, folder, verbose)
    pretrain_s = time.perf_counter() - start
    costs = _group_costs(cfg, prepared, strategies, folder)
    tables, signals = [], {}
    for ds_cfg, label in zip(cfg.datasets, dataset_labels(cfg.datasets)):
        for init in inits:
            for fraction in cfg.label_fractions:
                result = probe_group(cfg, prepared, ds_cfg, label, init, fraction, candidates[label],
                                     costs[label, init.name, fraction], budget, steps)
                table = result.table.assign(dataset=label, init=init.name, fraction=fraction, cost_s=result.cost_s,
                                            grid_cost_s=result.grid_cost_s)
                tables.append(table[COLUMNS])
                signals.setdefault(label, {}).setdefault(init.name, {})[f"{fraction:g}"] = result.signals
                if verbose:
                    print(f"{label} | {init.name} | {fraction:g}: {result.cost_s:.1f} s of probes")
    table = pd.concat(tables, ignore_index=True)
    write_outputs(folder, table, signals, budget=budget, steps=steps, pretrain_s=pretrain_s, skipped=skipped)
    return table
