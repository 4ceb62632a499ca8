"""The MedMNIST v2 protocol (Yang et al., Scientific Data 10:41, 2023) run through medtransfer, next to the paper.

ResNet-18 or ResNet-50 "(28)": native 28 px with the CIFAR-style 3x3 stem and no max-pool; Adam, lr 1e-3, batch 128,
100 epochs, lr x0.1 at epochs 50 and 75, cross-entropy (BCE for multi-label), mean 0.5 / std 0.5, no augmentation,
the epoch with the best validation AUC is tested. These are medtransfer's `TrainConfig` defaults, so the benchmark is an
ordinary experiment (results store, resumable, `medtransfer report` works on its folder) with one init, one strategy
and every label. ``--epochs`` shortens the schedule for CPU runs; the milestones stay at 50 % and 75 % of it.

    .venv/bin/python benchmarks/medmnist_protocol.py                         # PneumoniaMNIST, 3 seeds, full protocol
    .venv/bin/python benchmarks/medmnist_protocol.py --epochs 10             # shortened schedule (CPU)
    .venv/bin/python benchmarks/medmnist_protocol.py --file ~/.medmnist/breastmnist.npz --backbone resnet50 --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import platform
import re
import sys
import time
from pathlib import Path

import torch

from medtransfer.bench.runner import run_experiment
from medtransfer.bench.store import ResultStore
from medtransfer.config import ExperimentConfig
from medtransfer.report.tables import summary_table

DEFAULT_FILE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "medmnist" / "pneumoniamnist.npz"
# Test AUC / ACC of the paper's Table (ResNet "(28)"), as recorded in ../shared/REFERENCE.md; other datasets print "-".
PUBLISHED = {("pneumoniamnist", "resnet18"): (0.944, 0.854), ("pneumoniamnist", "resnet50"): (0.948, 0.854)}


def dataset_from_file(path: Path) -> dict:
    """``pneumoniamnist.npz`` -> name pneumoniamnist, size 28; ``bloodmnist_64.npz`` -> size 64 (medmnist's naming)."""
    match = re.fullmatch(r"([a-z0-9]+?)(?:_(\d+))?", path.stem)
    if path.suffix != ".npz" or match is None:
        sys.exit(f"error: {path} is not a MedMNIST file name (NAME.npz or NAME_SIZE.npz)")
    return {"name": match[1], "root": str(path.parent.resolve()), "size": int(match[2] or 28)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", type=Path, default=DEFAULT_FILE, help="a MedMNIST .npz (default: PneumoniaMNIST)")
    parser.add_argument("--backbone", choices=("resnet18", "resnet50"), default="resnet18")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=100, help="100 = the protocol; fewer = shortened schedule")
    parser.add_argument("--output", type=Path, help="experiment folder (default: runs/medmnist-<name>-<arch>-<epochs>ep)")
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    args = parser.parse_args()
    if not args.file.exists():
        sys.exit(f"error: {args.file} not found; pass --file with a MedMNIST .npz")
    dataset = dataset_from_file(args.file)
    cfg = ExperimentConfig.model_validate({
        "name": f"medmnist-{dataset['name']}-{args.backbone}-{args.epochs}ep",
        "datasets": [dataset],
        "backbone": {"name": args.backbone, "small_stem": dataset["size"] == 28},
        "inits": ["random"], "strategies": ["end_to_end"], "label_fractions": [1.0], "seeds": args.seeds,
        "train": {"epochs": args.epochs},  # everything else: the protocol's defaults
        "hardware": {"accelerator": args.device},
    })
    start = time.perf_counter()
    summary = run_experiment(cfg, args.output or Path("runs") / cfg.name)
    elapsed = time.perf_counter() - start
    rows = ResultStore(summary.folder).rows()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else \
        f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"\nMedMNIST v2 protocol: {dataset['name']} ({dataset['size']} px), {args.backbone}, {args.epochs} epochs"
          f"{'' if args.epochs == 100 else ' (shortened; the protocol is 100)'}, seeds {args.seeds}")
    print(f"device: {device}; wall time this invocation: {elapsed / 60:.1f} min "
          f"({summary.done} run(s) trained, {summary.skipped} already finished)")
    published = PUBLISHED.get((dataset["name"], args.backbone))
    print(f"{'metric':<6} {'medtransfer (mean ± std, n)':<30} {'published (Yang et al. 2023)':<28}")
    for i, metric in enumerate(("auc", "acc")):
        stats = summary_table(rows, metric).iloc[0]
        paper = f"{published[i]:.3f}" if published else "-"
        ours = f"{stats['mean']:.3f} ± {stats['std']:.3f} (n={stats['n']})"
        print(f"{metric:<6} {ours:<30} {paper:<28}")
    train_minutes = rows["timings"].map(lambda t: t.get("fit_s", 0) + t.get("test_s", 0)).sum() / 60
    print(f"training time summed over runs: {train_minutes:.1f} min; results: {summary.folder.resolve()}")
    if summary.failed:
        sys.exit(f"{len(summary.failed)} run(s) failed: {summary.failed}")


if __name__ == "__main__":
    main()
