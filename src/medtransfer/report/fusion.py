"""Each fusion against each of its members and against its best member, paired by seed (``comparisons.py``).

A member is compared under its own strategy where it has one, else under the fusion run's strategy, at the same
dataset and label fraction. The best member of a cell is the member with the best *mean* over seeds there; the fusion
is then tested against that member's per-seed values (the choice looks at the test metric, so it favours the
members: a fusion that beats it beats every member). p-values are Holm-adjusted over this table.
"""

from __future__ import annotations

import pandas as pd

from medtransfer.evaluate import LOWER_IS_BETTER
from medtransfer.report.comparisons import COLUMNS, compare, with_holm
from medtransfer.report.coverage import finished_runs
from medtransfer.report.integrity import grid_axes, with_axes

BEST = "best member"


def fusion_members(rows: pd.DataFrame) -> dict[str, list[dict]]:
    """{fusion init name: its members as stored in the runs' configs ([{init, strategy}, ...])}."""
    found = {}
    for init, config in zip(rows.get("init", []), rows.get("config", [])):
        members = ((config or {}).get("init") or {}).get("members")
        if members:
            found[init] = members
    return found


def fusion_table(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per (fusion cell, member) plus one per fusion cell against its best member; ``baseline`` names the
    member cell (``INIT/STRATEGY``), prefixed "best member:" for the latter. Empty without fusions."""
    column = f"metric.{metric}"
    done = finished_runs(rows)
    fusions = fusion_members(done)
    if column not in done or not fusions:
        return pd.DataFrame(columns=COLUMNS)
    done = done[done[column].notna()]
    lower = metric in LOWER_IS_BETTER
    axes = grid_axes(done)  # e.g. a training policy: a fusion meets its members under the same one
    records = []
    for (dataset, fraction, *levels), group in done.groupby(["dataset", "fraction", *axes], sort=True):
        values = {key: g.set_index("seed")[column] for key, g in group.groupby(["init", "strategy"], sort=True)}
        for (init, strategy), candidate in values.items():
            if init not in fusions:
                continue
            cells = [(m["init"], m["strategy"] or strategy) for m in fusions[init]]
            present = [cell for cell in dict.fromkeys(cells) if cell in values]
            row = {"dataset": dataset, "fraction": fraction, "init": init, "strategy": strategy,
                   **dict(zip(axes, levels))}
            records += [{**row, "baseline": "/".join(cell), **compare(candidate, values[cell], lower)}
                        for cell in present]
            if len(present) > 1:
                means = {cell: values[cell].mean() for cell in present}
                best = (min if lower else max)(present, key=means.get)
                records.append({**row, "baseline": f"{BEST}: {'/'.join(best)}",
                                **compare(candidate, values[best], lower)})
    return with_holm(records, with_axes(COLUMNS, done))
