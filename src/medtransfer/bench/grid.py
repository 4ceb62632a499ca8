"""Expanding an experiment into runs, each identified by the hash of its fully resolved config.

The hash covers everything that changes a result (data and its options, backbone, the init's *content* hash and
input normalisation, strategy, label fraction, seed, schedule; the training policy, the imbalance ratio and the named
rare class only when set) and nothing that does not (hardware, output folder), so re-running an experiment on another
machine skips what is finished and a changed checkpoint file is never mistaken for the old.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Sequence

from medtransfer.bench.store import config_hash
from medtransfer.config import DatasetConfig, ExperimentConfig, InitConfig
from medtransfer.data import identity_options
from medtransfer.data.csv_dataset import had_negative_targets
from medtransfer.imbalance import Imbalance, with_ratio
from medtransfer.data.normalisation import DEFAULT, Normalisation
from medtransfer.finetune.batches import drops_with_full_batches
from medtransfer.finetune.fusion import MembersStrategy
from medtransfer.finetune.policies import NO_POLICY, TrainingPolicy
from medtransfer.finetune.strategies import Strategy


@dataclass(frozen=True)
class RunSpec:
    dataset: DatasetConfig
    dataset_label: str
    init: InitConfig
    strategy: Strategy
    fraction: float
    seed: int
    policy: TrainingPolicy = NO_POLICY
    imbalance: Imbalance | None = None  # None: the natural ratio

    def labels(self) -> dict:
        return {"dataset": with_ratio(self.dataset_label, self.imbalance),  # a ratio is part of the training data
                "init": self.init.name, "strategy": self.strategy.label(), "fraction": self.fraction, "seed": self.seed,
                "policy": self.policy.label()}

    def resolved(self, cfg: ExperimentConfig, init_sha256: str | None, segmentation: bool = False,
                 normalisation: Normalisation = DEFAULT, n_train: int | None = None,
                 label_names: Sequence[str] = ()) -> dict:
        """The run as it acts; ``normalisation`` is the init's for this dataset's channels (stored for every run);
        ``n_train``, the size of its labelled subset, tells whether it keeps a partial last batch (``train.py``);
        ``label_names``, the labels of a multi-label dataset (() for other tasks), which uncertain policies act on.
        A training policy is in it only when set, so runs without one keep the ids they had before policies."""
        dataset = self.dataset.model_dump(mode="json")
        dataset["options"] = identity_options(dataset["options"])
        if dataset["resize_mode"] == "linear":  # the only mode before there was a choice: those runs keep their ids
            del dataset["resize_mode"]
        if had_negative_targets(dataset["options"].get("uncertain"), label_names):
            dataset["soft_targets"] = "final_labels"  # these runs trained targets of -1 before: not the same runs
        # a named rare class picks a natural run's rare_ap/rare_recall (single-label non-fusion runs: others have none)
        named_rare = (cfg.imbalance.rare_class if self.imbalance is None and not segmentation and not label_names
                      and not self.init.fuse else None)
        init = {"kind": _init_kind(self.init), "sha256": init_sha256, "normalisation": normalisation.to_dict()}
        if self.init.fuse:  # read by the report; the content hash in ``sha256`` identifies the members
            init["members"] = [{"init": name, "strategy": None if m.strategy is None else m.strategy.label()}
                               for m, name in zip(self.init.fuse, fusion_member_names(self.init))]
            if self.dataset.resize_mode != "linear":  # stored before this key, such a fusion was fed linear
                init["members_resized"] = self.dataset.resize_mode  # resizes: a new id, so it is run again
        train = _train_identity(cfg, segmentation, self.strategy.name != "knn" and n_train is not None
                                and self.imbalance is None  # new runs: nothing stored to keep apart
                                and drops_with_full_batches(max(n_train, cfg.train.min_samples_per_epoch),
                                                            cfg.train.batch_size))
        if self.dataset.resize_mode != "linear" and self.strategy.name != "end_to_end" and not self.init.fuse:
            train["frozen_features"] = "resize_mode_keyed"  # before the feature cache keyed the resize mode, a frozen
            # part may have been served linear resizes: a new id, so it is run again (end-to-end never read the cache)
        return {"dataset": dataset, "backbone": cfg.backbone.model_dump(mode="json"), "init": init,
                "strategy": self.strategy.model_dump(mode="json"), "fraction": self.fraction, "seed": self.seed,
                "train": train,
                **({} if self.policy.is_none else {"policy": self.policy.identity()}),
                **({"imbalance": self.imbalance.to_dict()} if self.imbalance else {}),  # set only: old ids stay
                **({"imbalance": {"ratio": None, "rare_class": named_rare}} if named_rare is not None else {})}

    def run_id(self, cfg: ExperimentConfig, init_sha256: str | None, segmentation: bool = False,
               normalisation: Normalisation = DEFAULT, n_train: int | None = None,
               label_names: Sequence[str] = ()) -> str:
        """Hash of ``resolved``; a 0.5 / 0.5 normalisation, which every run used before inits carried their own, is
        left out, so those runs keep the ids their stored results have."""
        identity = self.resolved(cfg, init_sha256, segmentation, normalisation, n_train, label_names)
        if normalisation.is_default:
            del identity["init"]["normalisation"]
        identity["init"].pop("members", None)  # names only: renaming a member's label re-runs nothing
        return config_hash(identity)


def _train_identity(cfg: ExperimentConfig, segmentation: bool, keeps_partial_batch: bool = False) -> dict:
    """The schedule as it acts on this run: the monitor resolved, the segmentation block only for segmentation.
    Settings that cannot change a run stay out of its hash, so adding such a setting never re-runs stored work;
    ``last_batch`` marks the runs whose epochs changed when the partial last batch stopped being dropped."""
    train = cfg.train.model_dump(mode="json")
    if keeps_partial_batch:
        train["last_batch"] = "kept"
    if not segmentation:
        train.pop("segmentation")
    if train["monitor"] is None:
        train["monitor"] = "dice" if segmentation else "auc"
    return train


def _init_kind(init: InitConfig) -> str:
    # zoo and timm inits are files too: the run id holds their content hash, whatever name led to them
    if init.fuse:
        return "fusion"
    return "checkpoint" if init.checkpoint or init.pretrain or init.zoo or init.timm else "random"


def fusion_member_names(fusion: InitConfig) -> list[str]:
    """The names a fusion's members are prepared under: a referenced init's own name, ``FUSION[k]`` for an inline
    one (``bench/fusion.py``)."""
    return [m.label if m.label is not None else f"{fusion.name}[{k}]" for k, m in enumerate(fusion.fuse)]


def inits_read(init: InitConfig) -> list[str]:
    """The prepared inits (file, normalisation) a run of ``init`` reads: itself and, for a fusion, its members."""
    return [init.name, *(fusion_member_names(init) if init.fuse else [])]


def init_strategies(init: InitConfig, strategies: list[Strategy]) -> list[Strategy]:
    """The strategies ``init`` runs under: the experiment's, except for a fusion whose members all name their own,
    on which no run's strategy acts: it runs once per cell, under a ``MembersStrategy`` saying what trains."""
    if init.fuse and all(m.strategy is not None for m in init.fuse):
        return [MembersStrategy(members=tuple(m.strategy for m in init.fuse))]
    return strategies


def dataset_labels(datasets: list[DatasetConfig]) -> list[str]:
    """Dataset names, disambiguated by their options (and ``resize``) when one name appears twice (e.g. two sizes)."""
    names = [d.name for d in datasets]

    def settings(d: DatasetConfig) -> dict:
        return {**d.options, **({"resize": d.resize} if d.resize is not None else {}),
                **({"resize_mode": d.resize_mode} if d.resize_mode != "linear" else {})}

    return [d.name if names.count(d.name) == 1 else
            f"{d.name}[{','.join(f'{k}={v}' for k, v in sorted(settings(d).items()))}]" for d in datasets]


def expand(cfg: ExperimentConfig) -> list[RunSpec]:
    """inits x datasets x strategies (``init_strategies``) x policies x label fractions x imbalance ratios x seeds, in
    an order that finishes whole seeds early."""
    labels = dataset_labels(cfg.datasets)
    return [RunSpec(dataset, label, init, strategy, fraction, seed, policy, imbalance)
            for seed, (dataset, label), imbalance, init, fraction in itertools.product(
                cfg.seeds, zip(cfg.datasets, labels), cfg.imbalance.settings(), cfg.inits, cfg.label_fractions)
            for strategy, policy in itertools.product(init_strategies(init, cfg.strategies), cfg.policies)]
