"""How many small runs to pack on one GPU: a MedMNIST-28 ResNet-18 grid on Ray at 1, 2, 4, 8 runs per GPU.

Each packing runs the same grid (``--runs`` runs: strategies x label fractions x seeds on PneumoniaMNIST, ResNet-18
with the small stem) as Ray tasks with ``gpus_per_run = 1 / packing`` into a fresh folder, and reports runs per hour
(end to end, Ray start-up included) and the GPU's mean utilisation and peak memory, sampled by ``nvidia-smi`` while
the grid runs. The packing with the most runs per hour is the one to document as ``gpus_per_run``'s default for
such grids. ``--accelerator cpu`` runs the same code with no GPU (a smoke test: packing then only sets workers).

    .venv/bin/python benchmarks/gpu_packing.py --root ../shared/data/medmnist            # on a GPU machine
    .venv/bin/python benchmarks/gpu_packing.py --accelerator cpu --runs 8 --packings 1,2 --epochs 1 --fraction 0.05
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from medtransfer.bench.runner import run_experiment
from medtransfer.config import ExperimentConfig
from medtransfer.config_files import validate_config

for key, value in {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}.items():
    os.environ.setdefault(key, value)


class GpuSampler:
    """``nvidia-smi`` polled every 500 ms in a thread: utilisation (%) and memory used (MiB) of GPU 0."""

    def __init__(self):
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self):
        while not self._stop.is_set():
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,"
                                  "nounits", "-i", "0"], capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.strip():
                util, memory = (float(v) for v in out.stdout.strip().split(","))
                self.samples.append((util, memory))
            self._stop.wait(0.5)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        if not self.samples:
            return {"gpu_util_mean": None, "gpu_mem_peak_mib": None}
        return {"gpu_util_mean": round(sum(u for u, _ in self.samples) / len(self.samples), 1),
                "gpu_mem_peak_mib": max(m for _, m in self.samples)}


def grid(args, packing: int) -> dict:
    fractions = [0.1, 0.25, 0.5, 1.0]
    seeds = list(range(max(1, args.runs // (2 * len(fractions)))))
    gpu = args.accelerator != "cpu"
    hardware = {"executor": "ray", "workers": packing, "cpus_per_run": args.cpus_per_run,
                "accelerator": args.accelerator, "gpus_per_run": round(1 / packing, 6) if gpu else 0}
    data = {"name": "pneumoniamnist", "root": str(Path(args.root).resolve())}
    return {"name": f"pack{packing}", "backbone": {"name": "resnet18", "small_stem": True}, "datasets": [data],
            "strategies": ["end_to_end", "linear"], "label_fractions": [f * args.fraction for f in fractions],
            "seeds": seeds, "train": {"epochs": args.epochs, "batch_size": 128}, "hardware": hardware}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="../shared/data/medmnist", help="folder holding pneumoniamnist.npz")
    parser.add_argument("--packings", default="1,2,4,8", help="runs per GPU to compare")
    parser.add_argument("--runs", type=int, default=32, help="grid size, a multiple of 8 (default: 32)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--fraction", type=float, default=1.0, help="scales every label fraction (smoke tests)")
    parser.add_argument("--cpus-per-run", type=int, default=1)
    parser.add_argument("--accelerator", default="gpu", help="gpu | cpu (smoke test without a GPU)")
    args = parser.parse_args()
    results = []
    for packing in (int(p) for p in args.packings.split(",")):
        config = validate_config(grid(args, packing), ExperimentConfig)
        with tempfile.TemporaryDirectory() as tmp, GpuSampler() if args.accelerator != "cpu" else _Null() as gpu:
            started = time.perf_counter()
            summary = run_experiment(config, Path(tmp) / "grid", progress=False)
            seconds = time.perf_counter() - started
        assert not summary.failed, summary.failed
        results.append({"runs_per_gpu": packing, "runs": summary.total, "seconds": round(seconds, 1),
                        "runs_per_hour": round(summary.total / seconds * 3600), **gpu.summary()})
        print(json.dumps(results[-1]), flush=True)
    best = max(results, key=lambda r: r["runs_per_hour"])
    print(f"\n{'runs/GPU':>8} {'runs':>5} {'s':>8} {'runs/hour':>10} {'GPU util %':>10} {'peak MiB':>9}")
    for r in results:
        print(f"{r['runs_per_gpu']:>8} {r['runs']:>5} {r['seconds']:>8} {r['runs_per_hour']:>10} "
              f"{r['gpu_util_mean']!s:>10} {r['gpu_mem_peak_mib']!s:>9}")
    print(f"most runs per hour: {best['runs_per_gpu']} per GPU (gpus_per_run: {1 / best['runs_per_gpu']:g})")


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def summary(self) -> dict:
        return {"gpu_util_mean": None, "gpu_mem_peak_mib": None}


if __name__ == "__main__":
    main()
