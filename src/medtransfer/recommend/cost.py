"""What the grid a recommendation ranks costs, so the probes can be held to a share of it (``budget``).

The runs are those the grid would make for the ranked strategies (every seed, policy and imbalance setting of the
experiment), each with its own number of training steps (a run at an imbalance ratio trains on its thinned subset
or its per-epoch draw, not on the whole labelled subset). A finished run costs its measured ``timings.fit_s``; an
unfinished one its steps x the measured seconds per step of its strategy's finished runs in the same (dataset, init,
fraction), and otherwise an estimate: its steps x the seconds per end-to-end training step measured during the
gradient profile (``rgn.py``) x the strategy's share of that step (``Candidate.step_share``: only the units from its
first trained one to its read-out run). The estimate leaves out validation passes and counts nothing for strategies
that train no unit (linear, k-NN: features computed once), so it errs low and the budget holds against the grid as
it really runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from medtransfer.bench.store import ResultStore


@dataclass
class GroupCost:
    """The grid's fine-tuning cost for one (dataset, init, fraction)."""

    runs: dict[str, list[str]]  # strategy label -> run ids of its runs in the grid
    steps: dict[str, int]  # run id -> its training steps (epochs x steps per epoch of its own training data)
    measured: dict[str, float] = field(default_factory=dict)  # run id -> fit_s of the finished runs

    def total(self, seconds_per_step: float, step_share: dict[str, float]) -> float:
        """The grid's cost, given an end-to-end step's seconds and each strategy's share of it (0: trains no
        unit)."""
        total = 0.0
        for label, ids in self.runs.items():
            known = [i for i in ids if i in self.measured]
            per_step = (sum(self.measured[i] for i in known) / sum(self.steps[i] for i in known) if known
                        else seconds_per_step * step_share[label])
            total += sum(self.measured[i] if i in self.measured else self.steps[i] * per_step for i in ids)
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
