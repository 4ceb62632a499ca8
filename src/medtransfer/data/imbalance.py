"""Class imbalance as a grid axis: the *training* subset at a set ratio majority : rare class; validation and test
never change.

The rule, for single-label tasks (binary, multi-class, ordinal): the *rare* class is ``rare_class`` when the
experiment names one, else the least frequent class of the run's labelled subset (the lowest index on a tie). At
ratio r every other class keeps at most r x the rare class's count, and the rare class is thinned only as far as
the largest other class needs to reach r::

    n_rare' = min(n_rare, floor(n_largest / r))        n_c' = min(n_c, round(r * n_rare'))

Below the natural ratio the rare class is kept whole and the larger classes are cut; above it the rare class is cut
and the largest class kept (all but a remainder under r). A binary task ends at exactly r : 1 up to rounding; a
multi-class task at "each class vs the rare one at most r". A ratio needing fewer than one rare example is out of
reach; the largest reachable one is n_largest (subsample) or the natural ratio (resample).

Modes: ``subsample`` keeps a fixed subset: each class keeps a prefix of its seeded order of the label fractions
(``fractions.class_orders``), so subsets are seeded and nested in the label-fraction subset of the same seed, and in
each other across fractions and ratios. ``resample`` (Zhang et al.: keep the positives, sample negatives at r each
epoch) keeps every rare example and re-draws the capped classes every epoch from a generator seeded by (seed,
epoch), so runs are reproducible; it never thins the rare class, so it refuses ratios above the natural one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Optional, Union

import numpy as np
from torch.utils.data import Sampler

from medtransfer.data.fractions import class_orders, describe_subset
from medtransfer.errors import ConfigError, allowed
from medtransfer.imbalance import Imbalance

SINGLE_LABEL = ("binary", "multiclass", "ordinal")


@dataclass(frozen=True)
class EpochDraw:
    """``resample``: positions (into the run's training indices) kept every epoch, and per capped class a pool of
    positions from which ``counts`` are drawn anew each epoch."""

    kept: np.ndarray
    pools: tuple[np.ndarray, ...]
    counts: tuple[int, ...]
    seed: int

    @property
    def size(self) -> int:
        return len(self.kept) + sum(self.counts)

    def order(self, epoch: int, n: int) -> np.ndarray:
        """``n`` positions of epoch ``epoch``: the epoch's draw, shuffled (repeated in fresh orders if n > size)."""
        rng = np.random.default_rng([self.seed, epoch])
        drawn = np.concatenate([self.kept, *(rng.choice(p, k, replace=False) for p, k in zip(self.pools,
                                                                                             self.counts))])
        laps = [rng.permutation(drawn) for _ in range(math.ceil(n / len(drawn)))]
        return np.concatenate(laps)[:n]


class EpochSampler(Sampler[int]):
    """Each pass trains on its own draw: Lightning calls ``set_epoch`` before every training epoch, and a pass
    without it (a DDP wrapper that re-reads the sampler) takes the next epoch's draw, the same on every rank."""

    def __init__(self, draw: EpochDraw, min_samples: int = 0):
        self.draw, self.n, self.epoch = draw, max(draw.size, min_samples), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        order = self.draw.order(self.epoch, self.n)
        self.epoch += 1
        return iter(order.tolist())


@dataclass(frozen=True)
class ImbalancePlan:
    """A run's training data under its imbalance setting; ``record`` is what the run stores (``extra.imbalance``)."""

    indices: np.ndarray  # training indices: the thinned subset (subsample) or the whole labelled subset
    draw: Optional[EpochDraw]
    record: dict


def rare_index(rare_class: Union[int, str, None], class_names: list[str], where: str) -> Optional[int]:
    """The named rare class as an index (a name of ``class_names`` or an index), None when none is named."""
    if rare_class is None:
        return None
    if isinstance(rare_class, str) and rare_class in class_names:
        return class_names.index(rare_class)
    if isinstance(rare_class, int) and 0 <= rare_class < len(class_names):
        return rare_class
    raise ConfigError(f"imbalance.rare_class: {rare_class!r} is not a class of {where}; allowed: "
                      f"{allowed(class_names)} or an index 0..{len(class_names) - 1}")


def plan_imbalance(labels: np.ndarray, task: str, subset: np.ndarray, seed: int, setting: Optional[Imbalance],
                   rare_class: Union[int, str, None], class_names: list[str], where: str) -> Optional[ImbalancePlan]:
    """The run's training data at ``setting`` (None: natural) from its labelled ``subset`` (sorted indices); None for
    tasks without classes to balance (multi-label, segmentation) at the natural ratio. Unreachable ratios raise
    ConfigError naming the largest reachable one."""
    if task not in SINGLE_LABEL:
        if setting is None:
            return None
        raise ConfigError(f"imbalance.ratios: {setting.ratio:g} given, but {where} is a {task} task; allowed: "
                          f"tasks {allowed(SINGLE_LABEL)} (a ratio between classes needs one class per example)")
    named = rare_index(rare_class, class_names, where)
    members = [order[np.isin(order, subset)] for order in class_orders(labels, task, seed)]
    n = np.array([len(m) for m in members])
    rare = int(np.argmin(n)) if named is None else named
    largest = int(max(np.delete(n, rare)))
    record = {"mode": None, "ratio": None, "rare_class": rare, "rare_named": named is not None,
              "natural_ratio": float(largest / n[rare])}
    if setting is None:
        return ImbalancePlan(subset, None, {**record, "achieved_ratio": record["natural_ratio"],
                                            "per_class": n.tolist()})
    n_rare = min(int(n[rare]), math.floor(largest / setting.ratio + 1e-9))
    if setting.mode == "resample" and n_rare < n[rare]:
        raise ConfigError(f"imbalance.ratios: {setting.ratio:g} is out of reach for {where}: resample keeps all "
                          f"{n[rare]} examples of the rare class {class_names[rare]!r} and has at most {largest} of "
                          f"another; largest reachable ratio: {largest / n[rare]:.4g} (mode subsample thins the "
                          "rare class to go further)")
    if n_rare < 1:
        raise ConfigError(f"imbalance.ratios: {setting.ratio:g} is out of reach for {where}: its largest class has "
                          f"{largest} examples, fewer than {setting.ratio:g} x one example of the rare class "
                          f"{class_names[rare]!r}; largest reachable ratio: {largest}")
    cap = round(setting.ratio * n_rare)
    counts = [n_rare if c == rare else min(int(k), cap) for c, k in enumerate(n)]
    record.update(mode=setting.mode, ratio=setting.ratio, per_class=counts,
                  achieved_ratio=float(max(k for c, k in enumerate(counts) if c != rare) / n_rare))
    if setting.mode == "subsample":
        return ImbalancePlan(np.sort(np.concatenate([m[:k] for m, k in zip(members, counts)])), None, record)
    positions = [np.searchsorted(subset, m) for m in members]
    capped = [c for c, k in enumerate(n) if counts[c] < k]
    kept = np.concatenate([p for c, p in enumerate(positions) if c not in capped])
    draw = EpochDraw(kept, tuple(positions[c] for c in capped), tuple(counts[c] for c in capped), seed)
    return ImbalancePlan(subset, draw, record)


def class_counts(record: Optional[dict], labels: np.ndarray, task: str, indices: np.ndarray) -> dict:
    """The classes a run trains on per epoch (``extra.class_counts``): a resampled run sees its draw's counts."""
    if not record or record["mode"] != "resample":
        return describe_subset(labels, task, indices)
    return {"n": int(sum(record["per_class"])), "per_class": record["per_class"]}
