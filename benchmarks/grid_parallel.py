"""A CPU grid run sequentially and on Ray with N local workers: parallel efficiency and Ray's per-task overhead.

The grid (tiny ResNet on synthetic images, ``--runs`` runs from strategies x label fractions x seeds) trains with one
torch thread per run in both modes, so both do the same work and store the same numbers (checked). For each run
length (``--epochs``, several allowed) it reports:

* end to end, what a user waits for: ``medtransfer run EXP.yaml`` as a fresh process, sequential and with
  ``--workers N`` (the latter starts Ray while the command imports torch and checks the data);
* in process: ``run_experiment`` called from an already warm Python, so the driver's own imports are not counted;
* parallel efficiency T_seq / (N * T_N) for both, Ray's start + stop measured alone, the round trip of a no-op task,
  and a run's mean training time (stored ``fit_s``) in each mode: equal when every worker had a core of its own.

On a machine shared with other work the efficiency is depressed: N workers need N idle cores.

    .venv/bin/python benchmarks/grid_parallel.py                           # 24 runs, 2 workers, 4 epochs
    .venv/bin/python benchmarks/grid_parallel.py --epochs 4 16 32 --readme README.md   # README's table
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from medtransfer.bench.ray_connect import ray_session
from medtransfer.bench.runner import run_experiment
from medtransfer.bench.store import ResultStore
from medtransfer.config import ExperimentConfig, HardwareConfig
from medtransfer.config_files import validate_config

LOOPBACK_RAY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
for key, value in LOOPBACK_RAY.items():  # a throw-away local instance on this machine only
    os.environ.setdefault(key, value)
START = "<!-- grid-parallel: start (written by benchmarks/grid_parallel.py --readme; do not edit) -->"
END = "<!-- grid-parallel: end -->"


def grid(runs: int, epochs: int, n_train: int) -> dict:
    fractions = [0.25, 0.5, 1.0]
    seeds = list(range(max(1, runs // (2 * len(fractions)))))
    return {"name": "grid_parallel", "backbone": {"name": "resnet_tiny"}, "strategies": ["end_to_end", "linear"],
            "datasets": [{"name": "synthetic2d", "n_train": n_train, "n_val": 60, "n_test": 60, "size": 16}],
            "label_fractions": fractions, "seeds": seeds, "train": {"epochs": epochs, "batch_size": 32},
            "hardware": {"cpus_per_run": 1}}


def in_process(config: dict, folder: Path, workers: int | None) -> float:
    hardware = {**config["hardware"], **({"executor": "ray", "workers": workers} if workers else {})}
    started = time.perf_counter()
    summary = run_experiment(validate_config({**config, "hardware": hardware}, ExperimentConfig), folder,
                             progress=False)
    assert not summary.failed, summary.failed
    return time.perf_counter() - started


def command_line(config: dict, folder: Path, workers: int | None) -> float:
    experiment = folder.parent / f"{folder.name}.yaml"
    experiment.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "medtransfer.cli", "run", str(experiment), "--output", str(folder),
               "--no-progress", *(["--workers", str(workers)] if workers else [])]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return elapsed


def stored(folder: Path):
    return ResultStore(folder).rows().set_index("run_id").sort_index()


def ray_overhead(workers: int, tasks: int) -> dict:
    """Start-up + shutdown of a local instance alone, and the round trip of a no-op one-CPU task."""
    hw = HardwareConfig(executor="ray", workers=workers, cpus_per_run=1)
    started = time.perf_counter()
    with ray_session(hw, verbose=False) as ray:
        noop = ray.remote(lambda: None).options(num_cpus=1)
        ray.get([noop.remote() for _ in range(workers)])  # workers up
        up = time.perf_counter() - started
        one = time.perf_counter()
        for _ in range(tasks):
            ray.get(noop.remote())
        per_task_ms = (time.perf_counter() - one) / tasks * 1000
    return {"startup_s": up, "total_s": time.perf_counter() - started, "noop_task_ms": per_task_ms}


def measure(args, epochs: int) -> dict:
    config, n = grid(args.runs, epochs, args.n_train), args.workers
    times, identical, fit_s = {}, True, {}
    with tempfile.TemporaryDirectory() as tmp:
        for way, timer in (("cli", command_line), ("in_process", in_process)):
            for mode, workers in (("seq", None), ("par", n)):
                times[way, mode] = timer(config, Path(tmp) / f"{way}_{mode}", workers)
            seq, par = stored(Path(tmp) / f"{way}_seq"), stored(Path(tmp) / f"{way}_par")
            identical &= list(seq.index) == list(par.index) and list(seq["metrics"]) == list(par["metrics"])
            fit_s = {mode: sum(t["fit_s"] for t in rows["timings"]) / len(rows) for mode, rows in (("seq", seq),
                                                                                                   ("par", par))}
    return {"epochs": epochs, "runs": args.runs, "workers": n, "identical_metrics": identical,
            **{f"t_{mode}_{way}_s": round(t, 2) for (way, mode), t in times.items()},
            **{f"efficiency_{way}": round(times[way, "seq"] / (n * times[way, "par"]), 3)
               for way in ("cli", "in_process")},
            "run_fit_s_seq": round(fit_s["seq"], 2), "run_fit_s_par": round(fit_s["par"], 2)}


def markdown(rows: list[dict], overhead: dict, machine: str, load: float) -> str:
    n = rows[0]["workers"]
    lines = [f"| epochs per run (a run's training time alone / on a worker) | `medtransfer run`: T_seq | T_{n} workers "
             f"| efficiency T_seq / ({n}·T_{n}) | in process: T_seq | T_{n} | efficiency |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['epochs']} ({r['run_fit_s_seq']:.2f} s / {r['run_fit_s_par']:.2f} s) "
                     f"| {r['t_seq_cli_s']:.1f} s | {r['t_par_cli_s']:.1f} s | **{r['efficiency_cli']:.2f}** "
                     f"| {r['t_seq_in_process_s']:.1f} s | {r['t_par_in_process_s']:.1f} s "
                     f"| {r['efficiency_in_process']:.2f} |")
    same = "identical" if all(r["identical_metrics"] for r in rows) else "NOT identical"
    return ("\n".join(lines) + f"\n\n{rows[0]['runs']} runs per grid; stored metrics {same} sequential vs Ray. "
            f"Ray's own start + stop of a local instance: {overhead['total_s']:.1f} s; a no-op task's round trip: "
            f"{overhead['noop_task_ms']:.1f} ms. Machine: {machine}, load average before the run "
            f"{load:.2f}.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=24, help="grid size, a multiple of 6 (default: 24)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, nargs="+", default=[4], help="run lengths to measure")
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--noop-tasks", type=int, default=200)
    parser.add_argument("--readme", type=Path, help="rewrite this README's grid-parallel table")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    rows = [measure(args, epochs) for epochs in args.epochs]
    overhead = ray_overhead(args.workers, args.noop_tasks)
    print(json.dumps({"rows": rows, "ray": overhead, "load_avg_1min_before": load}, indent=2))
    if args.readme:
        spec = importlib.util.spec_from_file_location("readme_tables", Path(__file__).with_name("readme_tables.py"))
        tables = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(tables)
        block = markdown(rows, overhead, tables.machine(), load)
        args.readme.write_text(tables.rewrite(args.readme.read_text(encoding="utf-8"), block, START, END),
                               encoding="utf-8")


if __name__ == "__main__":
    main()
