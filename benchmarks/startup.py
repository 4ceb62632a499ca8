"""Start-up cost of the CLI's light commands against ``python -c "import torch"``, measured in one run.

``--help``, ``results`` and ``report`` must not import what only training uses (torch, Lightning, MONAI, timm);
these ratios show it. Each command runs as a fresh process (bytecode compiled at install, as ``make`` does), the
best of ``--repeat`` runs is kept to discount a busy machine, and the store read by ``results``/``report`` is a
small one the script writes.

    .venv/bin/python benchmarks/startup.py             # targets: --help <= 0.3x, results <= 1x import torch
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = {"medtransfer --help": 0.3, "medtransfer results": 1.0}


def best_of(cmd: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return min(times)


def fake_store(folder: Path) -> None:
    """Six finished runs (two cells x three seeds), enough for ``results`` and ``report`` to do their real work."""
    from medtransfer.bench.store import ResultStore

    store = ResultStore(folder)
    for init in ("random", "simclr"):
        for seed in range(3):
            run_id = f"{init}-{seed}"
            store.start(run_id, {"init": init, "seed": seed},
                        dict(dataset="synthetic2d", init=init, strategy="linear", fraction=0.1, seed=seed))
            store.finish(run_id, {"auc": 0.6 + 0.1 * (init == "simclr") + 0.01 * seed}, {}, {"auc": 0.6}, {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    cli = [sys.executable, "-m", "medtransfer.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        fake_store(Path(tmp))
        commands = {
            'python -c "import torch"': [sys.executable, "-c", "import torch"],
            "medtransfer --help": [*cli, "--help"],
            "medtransfer results": [*cli, "results", tmp],
            "medtransfer report": [*cli, "report", tmp, "--baseline", "random/linear", "--output", str(Path(tmp) / "report")],
            "medtransfer describe resnet_tiny": [*cli, "describe", "resnet_tiny"],
            "medtransfer list": [*cli, "list"],
        }
        seconds = {name: best_of(cmd, args.repeat) for name, cmd in commands.items()}
    base = seconds['python -c "import torch"']
    print(f"{platform.processor() or platform.machine()}, {platform.python_version()}, best of {args.repeat}")
    print(f"{'command':<36} {'s':>7} {'x import torch':>15}  target")
    for name, value in seconds.items():
        target = TARGETS.get(name)
        verdict = "" if target is None else f"<= {target:g}x " + ("ok" if value / base <= target else "MISSED")
        print(f"{name:<36} {value:7.2f} {value / base:15.2f}  {verdict}")


if __name__ == "__main__":
    main()
