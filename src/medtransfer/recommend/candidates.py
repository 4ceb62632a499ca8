"""The strategies a recommendation ranks, each reduced to what the signals can speak about: which depth units it
trains and which unit the head reads.

Nothing here is hard-coded per strategy: each one is applied (``Strategy.prepare``) to a throw-away backbone and
the result is read back — ``requires_grad`` per unit of the view, and how many units a truncation kept. A strategy
that (un)freezes units during the run (``freezing_changes``, e.g. warm-up) ends up training every unit, so it counts
as end-to-end; one with a frozen backbone (linear, k-NN) trains none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from medtransfer.finetune.strategies import Strategy, parse_strategy
from medtransfer.finetune.strategies.depth_range import DepthRangeStrategy
from medtransfer.finetune.strategies.truncate import Truncate
from medtransfer.models.backbones import Backbone

# what ``--all-depths`` ranks: every quarter alone, the study's truncations, and both ends
ALL_DEPTHS = ("end_to_end", "linear", "q1", "q2", "q3", "q4",
              {"name": "truncate", "keep": "0-0.25"}, {"name": "truncate", "keep": "0-0.5"},
              {"name": "truncate", "keep": "0-0.75"})
DEPTH_CHOOSING = (DepthRangeStrategy, Truncate)  # strategies whose point is to pick a depth


@dataclass(frozen=True)
class Candidate:
    strategy: Strategy
    trained: tuple[int, ...]  # indices of the units of the view it trains
    readout: int  # the unit whose pooled output the head reads
    trainable_params: int  # backbone + head parameters it trains: the tie-break (fewer wins)

    @property
    def label(self) -> str:
        return self.strategy.label()

    def step_share(self, unit_seconds: np.ndarray) -> float:
        """The share of an end-to-end training step this strategy's step costs: the units from its first trained
        one to its read-out run forward and backward; a frozen prefix is computed once (``finetune/frozen.py``)
        and units after a truncation are gone. 0 when nothing trains (features computed once)."""
        if not self.trained:
            return 0.0
        return float(unit_seconds[min(self.trained):self.readout + 1].sum() / unit_seconds.sum())


def ranked_strategies(strategies: list[Strategy], all_depths: bool) -> list[Strategy]:
    """The experiment's strategies; with ``all_depths``, or when none of them chooses a depth (range, truncate),
    also every depth of ``ALL_DEPTHS`` (the experiment's own first, no label twice)."""
    if not all_depths and any(isinstance(s, DEPTH_CHOOSING) for s in strategies):
        return list(strategies)
    extra = [parse_strategy(spec) for spec in ALL_DEPTHS]
    seen = {s.label() for s in strategies}
    return list(strategies) + [s for s in extra if s.label() not in seen]


def describe(strategy: Strategy, build: Callable[[], Backbone], view: str, num_outputs: int) -> Candidate:
    """Apply ``strategy`` to a fresh backbone from ``build`` and read back what it trains and where its head reads."""
    backbone = build()
    strategy.prepare(backbone, view)
    units = backbone.unit_parameters(view)  # after a truncation: the kept units only, numbered as before
    if strategy.freezing_changes:
        trained = tuple(range(len(units)))
        params = sum(p.numel() for p in backbone.parameters())
    else:
        trained = tuple(i for i, unit in enumerate(units) if any(p.requires_grad for p in unit))
        params = sum(p.numel() for p in backbone.parameters() if p.requires_grad)
    head = (backbone.num_features + 1) * num_outputs
    return Candidate(strategy, trained, len(units) - 1, params + head)
