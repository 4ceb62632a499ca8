"""recommendations.csv / .json (the format ``report`` and ``benchmarks/recommend.py`` read) and the printed table."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from medtransfer.errors import MedtransferError

COLUMNS = ["dataset", "init", "fraction", "strategy", "score", "rank", "probe", "rgn", "shift", "cost_s",
           "grid_cost_s"]
FORMAT_VERSION = 1
GROUP = ["dataset", "init", "fraction"]


def _plain(value):
    """NaN -> None, so the JSON file is standard JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def write_outputs(folder: Path, table: pd.DataFrame, signals: dict, budget: float, steps: int, pretrain_s: float,
                  skipped: list[dict]) -> None:
    groups = table.drop_duplicates(GROUP)
    summary = {"signals": signals, "budget": budget, "steps": steps, "cost_s": float(groups["cost_s"].sum()),
               "grid_cost_s": float(groups["grid_cost_s"].sum()), "pretrain_s": pretrain_s, "skipped": skipped,
               "version": FORMAT_VERSION}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        table.to_csv(folder / "recommendations.csv", index=False)
        (folder / "recommendations.json").write_text(json.dumps(_plain(summary), indent=1) + "\n")
    except OSError as err:
        raise MedtransferError(f"{folder}: cannot write the recommendations ({err.strerror or err}); "
                               "pass --output to write them elsewhere") from err


def format_recommendations(table: pd.DataFrame, summary: dict) -> str:
    """One ranked block per (dataset, init, fraction), headed by its probe cost against the grid's."""
    blocks = []
    for (dataset, init, fraction), rows in table.groupby(GROUP, sort=False):
        cost, grid = rows["cost_s"].iloc[0], rows["grid_cost_s"].iloc[0]
        group = summary["signals"][dataset][init][f"{fraction:g}"]
        share = f"{cost / grid:.1%} of" if grid > 0 else "vs"
        cut = f", gradient profile cut to {group['steps']} steps by the budget" if group["stopped_by_budget"] else ""
        if group["over_budget"]:
            cut += "; over the budget: the fixed probes alone cost more than it allows (a grid this small)"
        lines = [f"{dataset} | {init} | fraction {fraction:g}: probes {cost:.1f} s = {share} the grid's "
                 f"{grid:.1f} s ({group['grid_cost']}){cut}",
                 f"  {'rank':>4}  {'strategy':<28} {'score':>6} {'probe':>7} {'rgn':>6} {'shift':>6}"]
        for row in rows.sort_values("rank").itertuples():
            lines.append(f"  {row.rank:>4}  {row.strategy:<28} {row.score:>6.2f} {row.probe:>7.3f} {row.rgn:>6.2f} "
                         f"{row.shift:>6.2f}")
        blocks.append("\n".join(lines))
    footer = (f"probes {summary['cost_s']:.1f} s in all, grid {summary['grid_cost_s']:.1f} s "
              f"(budget {summary['budget']:.0%}); pre-training {summary['pretrain_s']:.1f} s, counted apart")
    skipped = [f"skipped {s['init']}: {s['why']}" for s in summary["skipped"]]
    return "\n\n".join(blocks + ["\n".join([footer, *skipped])])
