"""Write README's block for ``examples/quarters_real.yaml`` from its results store: which depth to fine-tune, per
pre-training family, as measured — the study's claim (Khan & Fang: contrastive -> 2nd quarter, restorative -> 3rd)
beside what this grid found, agreeing or not.

The block holds, per (init, label fraction): the four quarters ranked by mean test AUC over seeds, the best strategy
of the whole grid (quarters, truncations, linear, end-to-end) and the fusion against its best member (paired by
seed, Holm); then the depth heatmap (written to ``docs/``), the wall time and the machine.

    medtransfer run examples/quarters_real.yaml --workers 2
    python benchmarks/quarters_real.py --folder runs/quarters-real --readme README.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib
import pandas as pd

from medtransfer.bench.store import ResultStore
from medtransfer.errors import MedtransferError
from medtransfer.report import plots
from medtransfer.evaluate.ranking import rule_strategy, stored_families
from medtransfer.report.coverage import finished_runs
from medtransfer.report.fusion import BEST, fusion_table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from readme_tables import machine, rewrite  # noqa: E402  (a sibling script, not a package)

START = "<!-- quarters-real: start (written by benchmarks/quarters_real.py; do not edit) -->"
END = "<!-- quarters-real: end -->"
QUARTERS = {"range 0-0.25": "q1", "range 0.25-0.5": "q2", "range 0.5-0.75": "q3", "range 0.75-1": "q4"}


def cell_means(done: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Mean and std over seeds per (init, fraction, strategy)."""
    return (done.groupby(["init", "fraction", "strategy"])[f"metric.{metric}"]
            .agg(mean="mean", std="std", n="count").reset_index())


def ranking_table(done: pd.DataFrame, metric: str, families: dict[str, str]) -> str:
    """Markdown: per (init, fraction) the quarters in measured order, the study's pick and the grid's best."""
    means = cell_means(done, metric)
    lines = ["| init (family) | labels | quarters, best first (mean test AUC, 3 seeds) | study's pick | best of the grid |",
             "|---|---|---|---|---|"]
    for (init, fraction), cell in means.groupby(["init", "fraction"], sort=True):
        if cell["strategy"].str.startswith("members:").any():
            continue  # a fusion: its own table
        quarters = cell[cell["strategy"].isin(QUARTERS)].sort_values("mean", ascending=False)
        order = " > ".join(f"{QUARTERS[s]} {m:.3f}" for s, m in zip(quarters["strategy"], quarters["mean"]))
        pick = rule_strategy(families.get(init))
        pick = QUARTERS.get(pick, pick)
        best = cell.loc[cell["mean"].idxmax()]
        lines.append(f"| {init} ({families.get(init, 'none')}) | {fraction:.0%} | {order} | {pick} | "
                     f"{best['strategy']} {best['mean']:.3f} ± {best['std']:.3f} |")
    return "\n".join(lines)


def fusion_lines(rows: pd.DataFrame, metric: str) -> str:
    table = fusion_table(rows, metric)
    lines = ["| labels | fusion | against | diff (paired) | p (Holm) |", "|---|---|---|---|---|"]
    for _, r in table.iterrows():
        lines.append(f"| {r['fraction']:.0%} | {r['mean']:.3f} | {r['baseline']} ({r['baseline_mean']:.3f}) | "
                     f"{r['diff']:+.3f} | {r['p_holm']:.3f} |")
    return "\n".join(lines) if len(table) else "(no fusion run)"


def block(folder: Path, metric: str, figure: Path, readme_dir: Path) -> str:
    rows = ResultStore(folder).rows(status=None)
    done = finished_runs(rows)
    if done.empty:
        raise MedtransferError(f"no finished run in {folder}; run examples/quarters_real.yaml first")
    matplotlib.use("Agg")
    plots.depth_heatmap(plots.depth_table(rows, metric), metric).savefig(figure, dpi=110, bbox_inches="tight")
    seconds = sum(t.get("fit_s", 0.0) + t.get("test_s", 0.0) for t in done["timings"] if isinstance(t, dict))
    warned = sum(bool((e or {}).get("warnings")) for e in done["extra"])
    return (f"{ranking_table(done, metric, stored_families(done, folder))}\n\n"
            f"The fusion (SimCLR training its 2nd quarter + Genesis its 3rd, concatenated) against each member "
            f"under that member's strategy and against the {BEST}:\n\n{fusion_lines(rows, metric)}\n\n"
            f"![Mean test {metric} by fine-tuned depth and init]({figure.relative_to(readme_dir)})\n\n"
            f"{len(done)} finished runs ({warned} with warnings: see `medtransfer results`), {seconds / 60:.0f} min of "
            f"fit + test summed over runs (pre-training not counted). Machine: {machine()}.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", type=Path, default=Path("runs/quarters-real"))
    parser.add_argument("--readme", type=Path, default=Path("README.md"))
    parser.add_argument("--metric", default="auc")
    args = parser.parse_args(argv)
    try:
        if not (args.folder / "results.sqlite").exists():
            raise MedtransferError(f"{args.folder}: no results.sqlite; run examples/quarters_real.yaml into it first")
        readme_dir = args.readme.resolve().parent
        text = block(args.folder, args.metric, readme_dir / "docs" / "quarters-real-depth.png", readme_dir)
        args.readme.write_text(rewrite(args.readme.read_text(encoding="utf-8"), text, START, END), encoding="utf-8")
    except MedtransferError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
