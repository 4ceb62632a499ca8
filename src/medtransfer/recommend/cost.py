"""What the grid a recommendation ranks costs, so the probes can be held to a share of it (``budget``).

The runs are those the grid would make for the ranked strategies (every seed, policy and imbalance setting of the
experiment). A finished run costs its measured ``timings.fit_s``; an unfinished one the mean measured ``fit_s`` of
its strategy's finished runs in the same (dataset, init, fraction), and otherwise an estimate: epochs x steps per
epoch x the seconds per end-to-end training step measured during the gradient profile (``rgn.py``) x the strategy's
share of that step (``Candidate.step_share``: only the units from its first trained one to its read-out run). The
estimate leaves out validation passes and counts nothing for strategies that train no unit (linear, k-NN: features
computed once), so it errs low and the budget holds against the grid as it really runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medtransfer.bench.store import ResultStore


@dataclass
class GroupCost:
    """The grid's fine-tuning cost for one (dataset, init, fraction)."""

    runs: dict[str, list[str]]  # strategy label -> run ids of its runs in the grid
    steps_per_run: int  # training steps of one run (epochs x steps per epoch)
    measured: dict[str, float] = field(default_factory=dict)  # run id -> fit_s of the finished runs

    def total(self, seconds_per_step: float, step_share: dict[str, float]) -> float:
        """The grid's cost, given an end-to-end step's seconds and each strategy's share of it (0: trains no
        unit)."""
        total = 0.0
        for label, ids in self.runs.items():
            known = [self.measured[i] for i in ids if i in self.measured]
            if known:
                total += sum(known) + (len(ids) - len(known)) * float(np.mean(known))
            else:
                total += len(ids) * self.steps_per_run * seconds_per_step * step_share[label]
        return total

    @property
    def source(self) -> str:
        """measured (every run finished), estimated (none) or extrapolated (some)."""
        n_measured = sum(i in self.measured for ids in self.runs.values() for i in ids)
        n_runs = sum(len(ids) for ids in self.runs.values())
        return "measured" if n_measured == n_runs else "estimated" if n_measured == 0 else "extrapolated"


def steps_per_run(n_train: int, epochs: int, batch_size: int, min_samples_per_epoch: int) -> int:
    """Training steps of one run, as ``fit_and_test`` samples: max(subset, min_samples_per_epoch) per epoch."""
    return epochs * math.ceil(max(n_train, min_samples_per_epoch) / batch_size)


def measured_fit_seconds(folder: Path) -> dict[str, float]:
    """run id -> ``timings.fit_s`` of every finished run stored in ``folder`` (nothing when no store is there)."""
    if not (Path(folder) / "results.sqlite").is_file():
        return {}
    rows = ResultStore(folder, read_only=True).rows()
    return {row.run_id: float(row.timings["fit_s"]) for row in rows.itertuples()
            if isinstance(row.timings, dict) and "fit_s" in row.timings}
