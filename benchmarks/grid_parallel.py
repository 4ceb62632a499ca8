"""A CPU grid run sequentially and on Ray with N local workers: parallel efficiency and Ray's per-task overhead.

The grid (tiny ResNet on synthetic images, ``--runs`` runs from strategies x label fractions x seeds) trains with one
torch thread per run in both modes, so both do the same work and store the same numbers (checked). Reported:

* T_seq and T_N: wall time of ``run_experiment`` each, the Ray one including starting and stopping its local Ray
  instance and each worker's first import of torch;
* parallel efficiency T_seq / (N * T_N), end to end, and again with Ray's start-up (measured alone) subtracted;
* Ray's scheduling overhead per run: the round trip of a no-op task with the same resources, in ms;
* a run's mean training time (stored ``fit_s``) in each mode: equal when every worker had a core of its own.

On a machine shared with other work the efficiency is depressed: N workers need N idle cores.

    .venv/bin/python benchmarks/grid_parallel.py                  # 24 runs, 2 workers
    .venv/bin/python benchmarks/grid_parallel.py --workers 4 --epochs 3 --n-train 800
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from medtransfer.bench.ray_executor import ray_session
from medtransfer.bench.runner import run_experiment
from medtransfer.bench.store import ResultStore
from medtransfer.config import ExperimentConfig, HardwareConfig, validate_config

LOOPBACK_RAY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
for key, value in LOOPBACK_RAY.items():  # a throw-away local instance on this machine only
    os.environ.setdefault(key, value)


def grid(args) -> dict:
    fractions = [0.25, 0.5, 1.0]
    seeds = list(range(max(1, args.runs // (2 * len(fractions)))))
    return {"name": "grid_parallel", "backbone": {"name": "resnet_tiny"}, "strategies": ["end_to_end", "linear"],
            "datasets": [{"name": "synthetic2d", "n_train": args.n_train, "n_val": 60, "n_test": 60, "size": 16}],
            "label_fractions": fractions, "seeds": seeds, "train": {"epochs": args.epochs, "batch_size": 32}}


def timed_grid(config: dict, folder: Path) -> float:
    started = time.perf_counter()
    summary = run_experiment(validate_config(config, ExperimentConfig), folder, progress=False)
    assert not summary.failed, summary.failed
    return time.perf_counter() - started


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=24, help="grid size, a multiple of 6 (default: 24)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--noop-tasks", type=int, default=200)
    args = parser.parse_args()

    config = grid(args)
    with tempfile.TemporaryDirectory() as tmp:
        t_seq = timed_grid({**config, "hardware": {"cpus_per_run": 1}}, Path(tmp) / "seq")
        t_par = timed_grid({**config, "hardware": {"executor": "ray", "workers": args.workers, "cpus_per_run": 1}},
                           Path(tmp) / "par")
        seq, par = (ResultStore(Path(tmp) / name).rows().set_index("run_id").sort_index() for name in ("seq", "par"))
        identical = list(seq.index) == list(par.index) and list(seq["metrics"]) == list(par["metrics"])
        # a run's own training time in each mode: longer in parallel means the workers did not get a core each
        fit_s = {name: sum(t["fit_s"] for t in rows["timings"]) / len(rows) for name, rows in (("seq", seq),
                                                                                               ("par", par))}
    overhead = ray_overhead(args.workers, args.noop_tasks)
    n = args.workers
    report = {
        "runs": len(seq), "workers": n, "epochs": args.epochs, "n_train": args.n_train, "cpus": os.cpu_count(),
        "load_avg_1min": os.getloadavg()[0], "python": platform.python_version(),
        "t_seq_s": round(t_seq, 2), "t_par_s": round(t_par, 2),
        "efficiency": round(t_seq / (n * t_par), 3),
        "efficiency_without_ray_startup": round(t_seq / (n * (t_par - overhead["total_s"])), 3),
        "ray_startup_s": round(overhead["startup_s"], 2), "ray_startup_and_shutdown_s": round(overhead["total_s"], 2),
        "noop_task_ms": round(overhead["noop_task_ms"], 2), "identical_metrics": identical,
        "run_fit_s_seq": round(fit_s["seq"], 2), "run_fit_s_par": round(fit_s["par"], 2)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
