"""Does `medtransfer recommend` pick the strategy the full grid finds best? Kendall's tau, regret and pick-is-best
rate against the measured grid, beside the two baselines "always end-to-end" and the study's rule.

For each experiment file: `medtransfer recommend` first (before the grid's results exist; it writes
FOLDER/recommendations.{csv,json}), then the grid (`run_experiment` skips finished runs, so a finished folder costs
nothing), then the scoring of ``evaluate.ranking`` per (dataset, init, fraction). Fusion inits are not ranked.
The table gives, per cell, the recommender's pick, the measured best, tau and the regret of each ranker (measured
metric of the best strategy minus that of the pick), then the summary over all cells and the cost of the probes
against the fine-tuning cost of the grid. Nothing is fitted to these grids: the recommender's combination is fixed.

    .venv/bin/python benchmarks/recommend.py                              # quarters_real + quarters, runs/NAME
    .venv/bin/python benchmarks/recommend.py examples/quarters.yaml --root /data/runs   # reuse /data/runs/quarters
    .venv/bin/python benchmarks/recommend.py --folders runs/quarters-real runs/quarters --readme README.md
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from medtransfer.bench.store import ResultStore
from medtransfer.errors import ConfigError, MedtransferError, allowed
from medtransfer.evaluate import ranking
from medtransfer.report.coverage import finished_runs
from medtransfer.report.recommend import cells_table, read_recommendations

START = "<!-- recommend-benchmark: start (written by benchmarks/recommend.py --readme; do not edit) -->"
END = "<!-- recommend-benchmark: end -->"
EXPERIMENTS = [Path("examples/quarters_real.yaml"), Path("examples/quarters.yaml")]
RANKERS = (ranking.RECOMMENDER, ranking.END_TO_END, ranking.STUDY_RULE)


@dataclass
class FolderScore:
    """One experiment folder scored: its per-ranker (table, cells), the per-cell table with the baselines beside
    the recommender, the recommender's stated costs (recommendations.json) and the store's measured fine-tuning."""

    name: str
    scored: dict
    cells: pd.DataFrame
    costs: dict
    finetune_s: float


def parse_families(pairs: list[str]) -> dict[str, str]:
    """``["simclr=contrastive", ...]`` -> {"simclr": "contrastive", ...}; a family no pre-training method has is
    refused (a typo would silently make the study's rule fine-tune end-to-end)."""
    from medtransfer.pretrain import METHODS

    known = sorted({method.family for method in METHODS.values()})
    families = {}
    for pair in pairs:
        init, sep, family = pair.partition("=")
        if not sep or not init or family not in known:
            raise ConfigError(f"--family: {pair!r} is not INIT=FAMILY with a known family; allowed families: "
                              f"{allowed(known)}")
        families[init] = family
    return families


def score_folder(folder: Path, metric: str, families: dict[str, str]) -> FolderScore:
    """Score ``folder``'s recommendations.csv against its finished runs; ``families`` overrides the families the
    folder's checkpoints record (``ranking.stored_families``)."""
    if not (folder / "results.sqlite").is_file():
        raise MedtransferError(f"{folder}: no results.sqlite; run the experiment into it first")
    recommendations = read_recommendations(folder)
    if recommendations is None:
        raise MedtransferError(f"{folder}: no recommendations.csv; run `medtransfer recommend EXP.yaml --output "
                               f"{folder}` first")
    rows = ResultStore(folder, read_only=True).rows(status=None)
    families = {**ranking.stored_families(rows, folder), **families}
    scored = ranking.score_rankers(rows, recommendations, metric, families)
    totals = folder / "recommendations.json"
    costs = json.loads(totals.read_text(encoding="utf-8")) if totals.is_file() else {}
    ranked = set(recommendations["init"])
    done = finished_runs(rows)
    timings = done.loc[done["init"].isin(ranked), "timings"]
    finetune_s = sum(t.get("fit_s", 0.0) + t.get("test_s", 0.0) for t in timings if isinstance(t, dict))
    return FolderScore(folder.name, scored, cells_table(scored, families), costs, finetune_s)


def pooled_summary(results: list[FolderScore]) -> pd.DataFrame:
    """``ranking.summary`` over the cells of every folder together."""
    return ranking.summary({name: (None, pd.concat([r.scored[name][1] for r in results], ignore_index=True))
                            for name in RANKERS})


def _number(value: float, digits: int = 3) -> str:
    return "–" if pd.isna(value) else f"{value:.{digits}f}"


def _seconds(value) -> str:
    return "–" if value is None or pd.isna(value) else f"{value:.0f} s"


def cells_markdown(results: list[FolderScore]) -> list[str]:
    """One table row per (experiment, dataset, init, fraction)."""
    e2e, rule = ranking.END_TO_END, ranking.STUDY_RULE
    lines = ["| experiment | dataset | init (family) | labels | recommended | measured best | τ | regret: "
             "recommender | always end-to-end | study rule (its pick) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for result in results:
        for c in result.cells.to_dict("records"):
            lines.append(f"| {result.name} | {c['dataset']} | {c['init']} ({c['family']}) | {c['fraction'] * 100:g}% "
                         f"| {c['pick']} | {c['best']} | {_number(c['tau'], 2)} | {_number(c['regret'])} "
                         f"| {_number(c[f'regret ({e2e})'])} | {_number(c[f'regret ({rule})'])} "
                         f"({c[f'pick ({rule})']}) |")
    return lines


def benchmark_block(results: list[FolderScore], metric: str, machine_text: str, load: float | None = None) -> str:
    """The Markdown between the README markers: per-cell table, summary per ranker, costs and the machine."""
    lines = [f"Test {metric}, mean over seeds; regret in {metric} units (0 = the pick was the grid's best strategy "
             "there; a tied top counts as a random pick). Family: the init's pre-training family the study's rule "
             "reads ('none': not pre-trained).", "", *cells_markdown(results), "",
             "| ranker | cells | mean τ | mean regret | pick is best |", "|---|---|---|---|---|"]
    for s in pooled_summary(results).itertuples(index=False):
        lines.append(f"| {s.ranker} | {s.cells} | {_number(s.mean_tau, 2)} | {_number(s.mean_regret)} "
                     f"| {_number(s.pick_is_best_rate * 100, 0)} % |")
    lines.append("")
    for r in results:
        probe, grid = r.costs.get("cost_s"), r.costs.get("grid_cost_s")
        share = f" ({probe / r.finetune_s:.1%} of it)" if probe is not None and r.finetune_s else ""
        pretrain = (f" Pre-trainings {_seconds(r.costs['pretrain_s'])} in the recommender's run, not counted: the "
                    "grid needs them too." if r.costs.get("pretrain_s") else "")
        lines.append(f"- {r.name}: probes {_seconds(probe)}, the recommender's grid cost {_seconds(grid)}; "
                     f"measured fine-tuning (fit + test) of the ranked inits' finished runs "
                     f"{_seconds(r.finetune_s)}{share}.{pretrain}")
    loaded = f", load average before the run {load:.2f}" if load is not None else ""
    return "\n".join([*lines, "", f"Machine: {machine_text}{loaded}."])


def run_one(path: Path, root: Path, workers: int | None, budget: float, steps: int | None) -> tuple[Path, dict]:
    """Recommend, then run the grid of the experiment ``path`` into ROOT/NAME (or the file's ``output``); returns
    (folder, the families its config gives). The recommender comes first, before any result of the grid exists."""
    from medtransfer.bench.runner import run_experiment
    from medtransfer.config import ExperimentConfig, HardwareConfig
    from medtransfer.config_files import load_config, validate_config
    from medtransfer.recommend import recommend  # the other half of issue 14: needed only to run, not to score

    cfg = load_config(path, ExperimentConfig)
    if workers:
        hardware = validate_config({**cfg.hardware.model_dump(), "executor": "ray", "workers": workers},
                                   HardwareConfig, source="--workers")
        cfg = cfg.model_copy(update={"hardware": hardware})
    folder = Path(cfg.output or root / cfg.name)
    started = time.perf_counter()
    recommend(cfg, folder, budget=budget, **({"steps": steps} if steps else {}))
    print(f"{path}: recommend took {time.perf_counter() - started:.0f} s (pre-trainings included)", flush=True)
    started = time.perf_counter()
    summary = run_experiment(cfg, folder, progress=False)
    print(f"{path}: grid took {time.perf_counter() - started:.0f} s; {len(summary.failed)} failed run(s)", flush=True)
    return folder, ranking.config_families(cfg)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiments", nargs="*", type=Path, default=EXPERIMENTS, help="experiment files to run")
    parser.add_argument("--folders", nargs="+", type=Path, help="only score these finished experiment folders "
                        "(recommendations.csv and results.sqlite in each): no training")
    parser.add_argument("--root", type=Path, default=Path("runs"), help="experiment folders go to ROOT/NAME")
    parser.add_argument("--workers", type=int, help="run the grid on this many local Ray workers")
    parser.add_argument("--budget", type=float, default=0.1, help="the recommender's probe budget (share of grid)")
    parser.add_argument("--steps", type=int, help="the recommender's gradient-profile steps (default: its own)")
    parser.add_argument("--family", action="append", default=[], metavar="INIT=FAMILY",
                        help="pre-training family of an init the folder's checkpoints do not record")
    parser.add_argument("--metric", default="auc")
    parser.add_argument("--readme", type=Path, help="rewrite this README's recommend-benchmark block")
    args = parser.parse_args(argv)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    try:
        families = parse_families(args.family)
        if args.folders:
            folders = [(folder, {}) for folder in args.folders]
        else:
            folders = [run_one(path, args.root, args.workers, args.budget, args.steps) for path in args.experiments]
        results = [score_folder(folder, args.metric, {**known, **families}) for folder, known in folders]
        block = benchmark_block(results, args.metric, _readme_tables().machine(), load)
    except MedtransferError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(block)
    if args.readme:
        tables = _readme_tables()
        args.readme.write_text(tables.rewrite(args.readme.read_text(encoding="utf-8"), block, START, END),
                               encoding="utf-8")
    return 0


def _readme_tables():
    spec = importlib.util.spec_from_file_location("readme_tables", Path(__file__).with_name("readme_tables.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    sys.exit(main())
