"""The report's figures, as matplotlib Figures (no pyplot state, so they work headless and in notebooks alike).

Each figure has a data function returning the DataFrame it draws, so what a picture shows can be checked and
reused: ``depth_table`` (the "which quarter" finding), ``per_class_table`` (rare classes), ``training_log``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from medtransfer.evaluate import LOWER_IS_BETTER
from medtransfer.evaluate.metrics import PER_CLASS_KEY
from medtransfer.models.depth import DepthRange
from medtransfer.report.coverage import finished_runs

RARE_SHARE = 0.5  # a class is rare when its prevalence is below half the mean prevalence of the task's classes
MAX_COLUMNS = 4


def _grid(n: int, width: float = 3.6, height: float = 2.9) -> tuple[Figure, list]:
    cols = min(MAX_COLUMNS, max(n, 1))
    rows = math.ceil(max(n, 1) / cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _fraction_axis(ax, fractions) -> None:
    fractions = sorted(set(fractions))
    if len(fractions) > 1 and max(fractions) / min(fractions) >= 10:
        ax.set_xscale("log")
    ax.set_xticks(fractions, [f"{f * 100:g}%" for f in fractions])
    ax.minorticks_off()


def label_efficiency(summary: pd.DataFrame, metric: str) -> Figure:
    """Metric vs label fraction, one line per init, a band for the 95 % CI; one panel per (dataset, strategy).

    Hollow markers flag means over fewer seeds than the grid has; a cell without finished runs has no point.
    """
    part = summary[summary["metric"] == metric]
    panels = list(part.groupby(["dataset", "strategy"], sort=True))
    fig, axes = _grid(len(panels))
    inits = sorted(part["init"].unique())
    colors = {init: f"C{i % 10}" for i, init in enumerate(inits)}
    for ax, ((dataset, strategy), group) in zip(axes, panels):
        for init, line in group.groupby("init", sort=True):
            line = line.sort_values("fraction")
            ax.plot(line["fraction"], line["mean"], "-", color=colors[init], label=init)
            ax.fill_between(line["fraction"], line["ci_low"], line["ci_high"], color=colors[init], alpha=0.15)
            full, short = line[~line["short"]], line[line["short"]]
            ax.plot(full["fraction"], full["mean"], "o", color=colors[init], ms=4)
            ax.plot(short["fraction"], short["mean"], "o", mfc="white", color=colors[init], ms=5)
        _fraction_axis(ax, group["fraction"])
        ax.set_title(f"{dataset} · {strategy}", fontsize=9)
        ax.set_xlabel("label fraction", fontsize=8)
        ax.set_ylabel(metric, fontsize=8)
        ax.grid(alpha=0.3)
    if axes:
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=min(len(inits), 6),
                   fontsize=8, title="init (band: 95 % CI; hollow: fewer seeds than the grid)", title_fontsize=8)
    return fig


def _depth(strategy: dict) -> tuple[int, float, float, str] | None:
    """(order, start, end, label) of the depth a strategy fine-tunes, read from its stored config; None if the
    strategy is not a depth range. Order puts the linear probe first and end-to-end last, ranges between.

    The head is always trained. Truncation, warm-up and layer-wise decay change more than which depth trains,
    so they are not rows of the heatmap.
    """
    name = strategy.get("name")
    if name == "linear":
        return 0, 1.0, 1.0, "none (linear probe)"
    if name == "end_to_end":
        return 2, 0.0, 1.0, "0-1 (end-to-end)"
    if name == "range":
        depth = DepthRange.parse(strategy["range"])
        return 1, depth.start, depth.end, str(depth)
    return None


def depth_table(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Mean ``metric`` by (dataset, fraction, fine-tuned depth range, init) over finished runs.

    Columns: dataset, fraction, order, depth, start, end, init, mean, n; rows go from the linear probe through
    the ranges (shallow to deep) to end-to-end.
    """
    done = finished_runs(rows)
    keys = ["order", "start", "end", "depth"]
    configs = done["config"] if "config" in done else [{}] * len(done)  # a hand-made frame has no configs
    depths = pd.DataFrame([_depth(config.get("strategy", {})) or (None,) * 4 for config in configs],
                          columns=keys, index=done.index)
    done = done.join(depths).dropna(subset=["depth"]).astype({"order": int})
    table = (done.groupby(["dataset", "fraction", *keys, "init"], sort=True)[f"metric.{metric}"]
             .agg(mean="mean", n="count").reset_index())
    return table.sort_values(["dataset", "fraction", *keys[:3], "init"], ignore_index=True)


def depth_heatmap(table: pd.DataFrame, metric: str) -> Figure:
    """Heatmap of a ``depth_table``: fine-tuned depth range (rows) x init (columns), one panel per label fraction."""
    panels = list(table.groupby(["dataset", "fraction"], sort=True))
    fig, axes = _grid(len(panels), width=1.4 + 1.1 * max(table["init"].nunique(), 1),
                      height=1.2 + 0.45 * max(table["depth"].nunique(), 1))
    cmap = "viridis_r" if metric in LOWER_IS_BETTER else "viridis"
    for ax, ((dataset, fraction), group) in zip(axes, panels):
        order = group.drop_duplicates("depth")["depth"].tolist()  # depth_table's order
        grid = group.pivot(index="depth", columns="init", values="mean").reindex(order)
        values = grid.to_numpy(dtype=float)
        image = ax.imshow(values, cmap=cmap, aspect="auto", vmin=np.nanmin(values), vmax=np.nanmax(values))
        for (i, j), value in np.ndenumerate(values):
            if not np.isnan(value):  # dark text on the bright end of the colour map
                bright = image.norm(value) > 0.6 if cmap == "viridis" else image.norm(value) < 0.4
                ax.text(j, i, f"{value:.3f}", ha="center", va="center", fontsize=8, color="k" if bright else "w")
        ax.set_xticks(range(grid.shape[1]), grid.columns, fontsize=8)
        ax.set_yticks(range(grid.shape[0]), grid.index, fontsize=8)
        ax.set_title(f"{dataset} · {fraction * 100:g}% labels", fontsize=9)
        fig.colorbar(image, ax=ax, label=metric, shrink=0.8)
    return fig


def per_class_key(rows: pd.DataFrame, metric: str) -> str | None:
    """The per-class values that belong to ``metric`` (AUC's per-class AUCs, bacc's recalls, ...)."""
    per_class = finished_runs(rows).get("per_class", pd.Series(dtype=object))
    keys = {k for pc in per_class if isinstance(pc, dict) for k in pc}
    preferred = PER_CLASS_KEY.get(metric, metric)
    return preferred if preferred in keys else (sorted(keys)[0] if keys else None)


def per_class_table(rows: pd.DataFrame, key: str) -> pd.DataFrame:
    """Per-class mean/std of ``per_class[key]`` by (dataset, fraction, init, strategy, class), with prevalence.

    ``prevalence`` is the class's share of the labelled training examples (positives per example for multi-label
    tasks), from ``extra.class_counts`` of the dataset's largest-fraction runs, the closest to the full training
    set. ``rare`` = prevalence below RARE_SHARE x the mean prevalence of the task's classes. Only tasks with more
    than two classes or labels are included: a binary task's two per-class AUCs are the same number.
    """
    records = []
    for run in finished_runs(rows).itertuples():
        values = (run.per_class or {}).get(key) if isinstance(run.per_class, dict) else None
        if values is None or len(values) <= 2:
            continue
        records += [{"dataset": run.dataset, "fraction": run.fraction, "init": run.init, "strategy": run.strategy,
                     "class": c, "value": v} for c, v in enumerate(values)]
    columns = ["dataset", "fraction", "init", "strategy", "class", "name", "mean", "std", "n", "prevalence", "rare"]
    if not records:
        return pd.DataFrame(columns=columns)
    table = (pd.DataFrame(records).groupby(["dataset", "fraction", "init", "strategy", "class"])["value"]
             .agg(mean="mean", std="std", n="count").reset_index())
    prevalence, rare, names = {}, {}, {}
    for dataset, group in finished_runs(rows).groupby("dataset"):
        stored = [e["class_names"] for e in group.get("extra", []) if isinstance(e, dict) and "class_names" in e]
        names.update({(dataset, c): name for c, name in enumerate(stored[0])} if stored else {})
        largest = group[group["fraction"] == group["fraction"].max()]
        if "extra" not in largest or not all(isinstance(e, dict) and "class_counts" in e for e in largest["extra"]):
            continue  # without class counts no class is called rare
        counts = np.sum([e["class_counts"]["per_class"] for e in largest["extra"]], axis=0)
        shares = counts / sum(e["class_counts"]["n"] for e in largest["extra"])
        for c, share in enumerate(shares):
            prevalence[dataset, c], rare[dataset, c] = float(share), bool(share < RARE_SHARE * shares.mean())
    keys = list(zip(table["dataset"], table["class"]))
    table["prevalence"] = [prevalence.get(k, np.nan) for k in keys]
    table["rare"] = [rare.get(k, False) for k in keys]
    table["name"] = [names.get(k, str(k[1])) for k in keys]  # runs stored before class names were: the index
    return table[columns]


def per_class_bars(table: pd.DataFrame, key: str, strategy: str) -> Figure:
    """Grouped bars (class x init, ± std over seeds) under one strategy; rare classes hatched and labelled."""
    part = table[table["strategy"] == strategy]
    panels = list(part.groupby(["dataset", "fraction"], sort=True))
    n_classes = int(part["class"].max()) + 1 if len(part) else 1
    fig, axes = _grid(len(panels), width=1.8 + 0.55 * n_classes * max(part["init"].nunique(), 1) ** 0.5)
    inits = sorted(part["init"].unique())
    width = 0.8 / max(len(inits), 1)
    for ax, ((dataset, fraction), group) in zip(axes, panels):
        classes = sorted(group["class"].unique())
        rare = group.drop_duplicates("class").set_index("class")
        for i, init in enumerate(inits):
            bars = group[group["init"] == init].set_index("class").reindex(classes)
            ax.bar(np.arange(len(classes)) + (i - (len(inits) - 1) / 2) * width, bars["mean"], width,
                   yerr=bars["std"].fillna(0), color=f"C{i % 10}", label=init, capsize=2,
                   hatch=["//" if rare.loc[c, "rare"] else "" for c in classes])
        labels = [f"{rare.loc[c, 'name']}\n{rare.loc[c, 'prevalence']:.0%}" + (" rare" if rare.loc[c, "rare"] else "")
                  for c in classes]
        ax.set_xticks(range(len(classes)), labels, fontsize=7)
        for tick, c in zip(ax.get_xticklabels(), classes):
            tick.set_color("crimson" if rare.loc[c, "rare"] else "black")
        ax.set_title(f"{dataset} · {fraction * 100:g}% labels · {strategy}", fontsize=9)
        ax.set_ylabel(f"per-class {key}", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    if axes:
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=min(len(inits), 6),
                   fontsize=8, title="init (class, training prevalence; hatched = rare)", title_fontsize=8)
    return fig


def training_log(rows: pd.DataFrame, runs_folder: str | Path, strategy: str) -> pd.DataFrame:
    """Per-epoch train loss and validation metrics of the finished runs under ``strategy``, from each run's
    Lightning ``metrics.csv`` (runs without one are skipped). Columns: dataset, fraction, init, seed, epoch and
    the logged values (train/loss, val/<metric>, val/loss)."""
    frames = []
    for run in finished_runs(rows).itertuples():
        path = Path(runs_folder) / "runs" / run.run_id[:16] / "metrics.csv"
        if run.strategy != strategy or not path.exists():
            continue
        log = pd.read_csv(path).drop(columns=["step"], errors="ignore").groupby("epoch").mean().reset_index()
        frames.append(log.assign(dataset=run.dataset, fraction=run.fraction, init=run.init, seed=run.seed))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def training_curves(log: pd.DataFrame, metric: str) -> Figure:
    """Train loss and validation ``metric`` per epoch, mean over seeds with a ± std band, one line per init."""
    series = [s for s in ("train/loss", f"val/{metric}") if s in log]
    panels = [(key, s) for key, _ in log.groupby(["dataset", "fraction"], sort=True) for s in series]
    fig, axes = _grid(len(panels))
    inits = sorted(log["init"].unique())
    for ax, ((dataset, fraction), name) in zip(axes, panels):
        part = log[(log["dataset"] == dataset) & (log["fraction"] == fraction)]
        for i, init in enumerate(inits):
            curve = part[part["init"] == init].groupby("epoch")[name].agg(["mean", "std"]).dropna(subset=["mean"])
            ax.plot(curve.index, curve["mean"], color=f"C{i % 10}", label=init)
            ax.fill_between(curve.index, curve["mean"] - curve["std"].fillna(0),
                            curve["mean"] + curve["std"].fillna(0), color=f"C{i % 10}", alpha=0.15)
        ax.set_title(f"{dataset} · {fraction * 100:g}% · {name}", fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.grid(alpha=0.3)
    if axes:
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=min(len(inits), 6),
                   fontsize=8, title="init (band: ± std over seeds)", title_fontsize=8)
    return fig
