"""Does SSL help under class imbalance, and for which class? The report's answer, from stored runs.

``class_gains``: per class, the value of a per-class metric (AUPRC by default) for every init and its gain over the
baseline init, paired by seed, beside the class's training prevalence and whether it is the run's rare class
(``evaluate.metrics.rare_class``). ``gain_vs_prevalence`` plots it (Zhang et al.: SSL helps mainly by raising the
rare class). ``ratio_table``/``ratio_heatmap``: the mean metric by init x imbalance ratio.

Runs at different ratios carry different dataset labels ("pneumoniamnist @ 10:1", ``data.imbalance.with_ratio``),
so every cell here, like every table of the report, holds the runs of one training set only.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from medtransfer.imbalance import split_ratio
from medtransfer.evaluate.rare import rare_class
from medtransfer.report.coverage import finished_runs
from medtransfer.report.integrity import CELL as RUN_CELL
from medtransfer.report.plots import _grid

GAIN_KEYS = ("ap", "recall")  # the per-class metrics a gain is read in, first present wins
SETTING = [c for c in RUN_CELL if c != "init"]  # what a run's cell is besides its init: compared within, never pooled
AXES = ("policy",)  # grid axes stored as columns of their own: part of the setting wherever the runs carry them
GAIN_COLUMNS = ["class", "name", "prevalence", "rare", "init", "mean", "n", "baseline_mean", "gain", "n_pairs"]


def settings_of(frame: pd.DataFrame) -> list[str]:
    """The columns that make a run's setting (its cell without the init) in ``frame``."""
    return [*SETTING, *(axis for axis in AXES if axis in frame)]


def gain_key(rows: pd.DataFrame) -> str | None:
    """The per-class metric the gains are read in: AUPRC when stored, else recall."""
    keys = {k for pc in finished_runs(rows).get("per_class", []) if isinstance(pc, dict) for k in pc}
    return next((k for k in GAIN_KEYS if k in keys), None)


def _per_run(rows: pd.DataFrame, key: str) -> pd.DataFrame:
    """One row per (run, class): its value, the class's training prevalence and whether it is the run's rare one."""
    records, setting = [], settings_of(rows)
    for run in finished_runs(rows).itertuples():
        values = run.per_class.get(key) if isinstance(run.per_class, dict) else None
        extra = run.extra if isinstance(getattr(run, "extra", None), dict) else {}
        counts = extra.get("class_counts")
        if values is None or not counts:
            continue
        names = extra.get("class_names") or [str(c) for c in range(len(values))]
        rare = rare_class(extra.get("imbalance"))
        shares = np.asarray(counts["per_class"]) / counts["n"]
        records += [{**{k: getattr(run, k) for k in setting}, "init": run.init, "seed": run.seed, "class": c,
                     "name": names[c], "value": v, "rare": c == rare, "prevalence": shares[c]}
                    for c, v in enumerate(values)]
    return pd.DataFrame(records, columns=[*setting, "class", "init", "seed", "name", "value", "rare", "prevalence"])


def class_gains(rows: pd.DataFrame, baseline: str, key: str | None = None) -> pd.DataFrame:
    """Per (dataset, fraction, strategy, class, init): mean per-class ``key`` over seeds, and ``gain`` = mean over
    the seeds it shares with ``baseline`` (same cell) of init − baseline; NaN for the baseline itself or without a
    shared seed. ``prevalence`` is the class's share of the training examples per epoch, ``rare`` marks the rare
    class of the cell's runs."""
    key, cell_keys = key or gain_key(rows), [*settings_of(rows), "class"]
    per_run = _per_run(rows, key) if key else pd.DataFrame()
    if per_run.empty:
        return pd.DataFrame(columns=[*cell_keys[:-1], *GAIN_COLUMNS])
    records = []
    for cell, group in per_run.groupby(cell_keys, sort=True):
        values = group.pivot(index=["seed"], columns="init", values="value")  # raises, never pools, on duplicates
        for init in values.columns:
            pairs = (values[init] - values[baseline]).dropna() if baseline in values and init != baseline \
                else pd.Series(dtype=float)
            records.append({**dict(zip(cell_keys, cell)), "name": group["name"].iloc[0],
                            "prevalence": group["prevalence"].mean(), "rare": bool(group["rare"].any()),
                            "init": init, "mean": values[init].mean(), "n": int(values[init].notna().sum()),
                            "baseline_mean": values[baseline].mean() if baseline in values else np.nan,
                            "gain": pairs.mean() if len(pairs) else np.nan, "n_pairs": len(pairs)})
    return pd.DataFrame(records, columns=[*cell_keys[:-1], *GAIN_COLUMNS])


def gain_vs_prevalence(gains: pd.DataFrame, key: str, baseline: str) -> Figure:
    """Gain over ``baseline`` (y) against training prevalence (x, log) per class, one colour per init, one panel per
    setting other than dataset and fraction (the strategy); rare classes are filled and labelled with their ratio."""
    part = gains.dropna(subset=["gain"])
    by = [c for c in settings_of(gains) if c not in ("dataset", "fraction")]
    panels = list(part.groupby(by, sort=True))
    fig, axes = _grid(len(panels), width=4.2, height=3.2)
    inits = sorted(part["init"].unique())
    for ax, (setting, group) in zip(axes, panels):
        for i, init in enumerate(inits):
            points = group[group["init"] == init]
            for rare, face in ((True, f"C{i % 10}"), (False, "none")):
                chosen = points[points["rare"] == rare]
                ax.scatter(chosen["prevalence"], chosen["gain"], s=28, edgecolors=f"C{i % 10}", facecolors=face,
                           label=init if rare or not points["rare"].any() else None)
        for row in group[group["rare"]].itertuples():
            ax.annotate(split_ratio(row.dataset)[1], (row.prevalence, row.gain), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("class prevalence in training", fontsize=8)
        ax.set_ylabel(f"per-class {key}: init − {baseline}", fontsize=8)
        ax.set_title(_panel_title(dict(zip(by, setting))), fontsize=9)
        ax.grid(alpha=0.3)
    if axes:
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=min(len(inits), 6),
                   fontsize=8, title="init (filled = rare class, labelled with the training ratio)", title_fontsize=8)
    return fig


def ratio_table(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Mean ``metric`` and seed count by (dataset without ratio, fraction, strategy, ratio, init); ``ratio`` is
    "natural" or "r:1", ordered natural first, then by r."""
    done = finished_runs(rows)
    split = pd.DataFrame([split_ratio(d) for d in done["dataset"]], columns=["base", "ratio"], index=done.index)
    done, setting = done.drop(columns="dataset").join(split).rename(columns={"base": "dataset"}), settings_of(done)
    table = (done.groupby([*setting, "ratio", "init"], sort=True)[f"metric.{metric}"].agg(mean="mean", n="count")
             .reset_index())
    order = table["ratio"].map(lambda r: -1.0 if r == "natural" else float(r.split(":")[0]))
    return table.assign(order=order).sort_values([*setting, "order", "init"]).drop(columns="order") \
        .reset_index(drop=True)


def _panel_title(setting: dict) -> str:
    return " · ".join(f"{v * 100:g}% labels" if k == "fraction" else str(v) for k, v in setting.items())


def ratio_heatmap(table: pd.DataFrame, metric: str) -> Figure:
    """Heatmap of a ``ratio_table``: init (rows) x ratio (columns), one panel per setting (dataset, strategy,
    fraction)."""
    setting = settings_of(table)
    panels = list(table.groupby(setting, sort=True))
    fig, axes = _grid(len(panels), width=1.6 + 1.0 * table["ratio"].nunique(),
                      height=1.2 + 0.45 * table["init"].nunique())
    for ax, (key, group) in zip(axes, panels):
        grid = group.pivot(index="init", columns="ratio", values="mean")[group["ratio"].drop_duplicates().tolist()]
        values = grid.to_numpy(dtype=float)
        image = ax.imshow(values, cmap="viridis", aspect="auto")
        for (i, j), value in np.ndenumerate(values):
            if not np.isnan(value):
                ax.text(j, i, f"{value:.3f}", ha="center", va="center", fontsize=8,
                        color="k" if image.norm(value) > 0.6 else "w")
        ax.set_xticks(range(grid.shape[1]), grid.columns, fontsize=8)
        ax.set_yticks(range(grid.shape[0]), grid.index, fontsize=8)
        ax.set_xlabel("training ratio majority : rare", fontsize=8)
        ax.set_title(_panel_title(dict(zip(setting, key))), fontsize=9)
        fig.colorbar(image, ax=ax, label=metric, shrink=0.8)
    return fig


def report_parts(rows: pd.DataFrame, metric: str, baseline: str) -> tuple[pd.DataFrame, list, list[str]]:
    """(class gains, figures as (name, caption, Figure), notes) for ``build.analyse``."""
    key = gain_key(rows)
    gains = class_gains(rows, baseline, key)
    figures, notes = [], []
    if gains["gain"].notna().any():
        figures.append(("gain-vs-prevalence", f"per-class {key} gain of each init over {baseline} (paired by seed) "
                        "against the class's training prevalence; filled = the rare class (named, or the least "
                        "frequent when training is at least 2 : 1)", gain_vs_prevalence(gains, key, baseline)))
    else:
        notes.append(f"No per-class values paired with the baseline init {baseline!r}: no gain-vs-prevalence figure.")
    ratios = ratio_table(rows, metric)
    if ratios["ratio"].nunique() > 1:
        figures.append(("imbalance-heatmap", f"mean {metric} by init and training ratio (majority : rare class)",
                        ratio_heatmap(ratios, metric)))
    return gains, figures, notes


def per_class_display(gains: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """``class_gains`` for reading: the ratio split from the dataset, rare classes marked "rare"."""
    split = [split_ratio(d) for d in gains["dataset"]]
    number = lambda v, fmt: "" if pd.isna(v) else format(v, fmt)  # noqa: E731
    axes = {axis: gains[axis] for axis in AXES if axis in gains and (gains[axis] != "none").any()}
    return pd.DataFrame({
        "dataset": [s[0] for s in split], "ratio": [s[1] for s in split],
        "labels": gains["fraction"].map(lambda f: f"{f * 100:g}%"), "strategy": gains["strategy"], **axes,
        "class": gains["name"] + np.where(gains["rare"], " (rare)", ""),
        "prevalence": gains["prevalence"].map(lambda v: number(v, ".1%")), "init": gains["init"],
        "mean": gains["mean"].map(lambda v: number(v, f".{digits}f")), "n": gains["n"].astype(str),
        "gain": gains["gain"].map(lambda v: number(v, f"+.{digits}f")), "pairs": gains["n_pairs"].astype(str)})
