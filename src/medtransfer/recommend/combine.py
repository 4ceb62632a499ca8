"""From per-unit signals to one fixed score per strategy. Nothing is fitted: the rule below is all there is, so a
benchmark that judges it (``benchmarks/recommend.py``) cannot have been tuned on.

For a strategy s with trained units T(s) and read-out unit r(s) (``candidates.py``):

- probe(s) = P(r(s)): how well a linear head on the unit it reads already does (higher is better; lower for the
  monitors ``loss``/``mae``);
- rgn(s) = mean_{u in T(s)} R(u) / mean_u R(u): whether it trains the units the task's gradient pulls on hardest,
  relative to the network's average (1 for end-to-end, 0 when no unit trains);
- shift(s) = mean_{u in T(s)} S(u) / mean_u S(u): likewise for the units whose representation had to move most.

Each signal ranks the candidates (1 = best, ties share their average rank); score = -(mean of the three ranks), a
Borda count, so higher is better and no signal's scale can dominate. Equal scores go to the strategy training fewer
parameters: cheaper, and less prone to overfit a small labelled subset. rank 1 = recommended.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from medtransfer.evaluate import LOWER_IS_BETTER
from medtransfer.recommend.candidates import Candidate

SIGNALS = ("probe", "rgn", "shift")


def relative_mean(values: np.ndarray, units: tuple[int, ...]) -> float:
    """mean over ``units`` of ``values`` / mean over all units; 0 when ``units`` is empty."""
    if not units:
        return 0.0
    overall = float(np.mean(values))
    return float(np.mean(values[list(units)]) / overall) if overall > 0 else float("nan")


def strategy_signals(candidates: list[Candidate], probe: np.ndarray, rgn: np.ndarray,
                     shift: np.ndarray) -> pd.DataFrame:
    """One row per candidate: strategy label, probe, rgn, shift (and its trainable parameters, for ties)."""
    return pd.DataFrame([{"strategy": c.label, "probe": float(probe[c.readout]),
                          "rgn": relative_mean(rgn, c.trained), "shift": relative_mean(shift, c.trained),
                          "trainable_params": c.trainable_params} for c in candidates])


def borda(signals: pd.DataFrame, monitor: str) -> pd.DataFrame:
    """``signals`` with ``score`` and ``rank`` added, sorted by rank. A NaN signal (undefined, e.g. a constant
    feature map) ranks last on that signal."""
    ranks = []
    for name in SIGNALS:
        values = signals[name].to_numpy(dtype=float)
        better_high = not (name == "probe" and monitor in LOWER_IS_BETTER)
        key = np.where(np.isnan(values), -np.inf, values if better_high else -values)
        ranks.append(rankdata(-key, method="average"))  # rank 1 = best
    out = signals.copy()
    out["score"] = -np.mean(ranks, axis=0)
    order = np.lexsort((out["trainable_params"].to_numpy(), -out["score"].to_numpy()))
    out = out.iloc[order].reset_index(drop=True)
    out["rank"] = np.arange(1, len(out) + 1)
    return out
