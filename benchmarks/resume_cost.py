"""What writing a resume state at every epoch's start costs a fine-tuning run (``hardware.resume_every_s``).

Runs the same tiny fine-tunings (quickstart-sized by default: synthetic2d, resnet_tiny, 512 samples per epoch) with
a state at every epoch (``resume_every_s: 0``) and with none (a period longer than the run), alternating the two so
machine load hits both alike, and prints the median fit time of each, the overhead and the state's size.

    .venv/bin/python benchmarks/resume_cost.py                                  # quickstart-sized runs
    .venv/bin/python benchmarks/resume_cost.py --backbone resnet18 --small-stem --size 28 --repeats 2
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch

from medtransfer.bench.runner import quiet_lightning
from medtransfer.config import HardwareConfig, TrainConfig
from medtransfer.data.synthetic import synthetic2d
from medtransfer.finetune.strategies import parse_strategy
from medtransfer.finetune.train import fine_tune
from medtransfer.models.factory import create_backbone

NEVER_S = 1e9  # a period no run reaches: no state written


def one_run(data, args, strategy: str, every_s: float, workdir: Path) -> tuple[float, list[tuple[float, int]]]:
    """(fit seconds, [(seconds, bytes) of each resume state written]) — each state timed on its own, which machine
    load disturbs far less than the difference of two fit times."""
    L.seed_everything(0, verbose=False)
    backbone = create_backbone(args.backbone, 1, data.image_size, small_stem=args.small_stem)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=1e-3, schedule="cosine",
                      min_samples_per_epoch=args.samples_per_epoch)
    states = []
    save = L.Trainer.save_checkpoint

    def timed_save(trainer, path, *rest, **kw):
        start = time.perf_counter()
        save(trainer, path, *rest, **kw)
        if Path(path).suffix == ".tmp":  # the resume state (the best checkpoint is saved by the same call)
            states.append((time.perf_counter() - start, Path(path).stat().st_size))
    L.Trainer.save_checkpoint = timed_save
    try:
        result = fine_tune(data, np.arange(args.n_train), backbone, parse_strategy(strategy), backbone.default_view,
                           cfg, HardwareConfig(accelerator="cpu", resume_every_s=every_s), 0, workdir)
    finally:
        L.Trainer.save_checkpoint = save
    return result.timings["fit_s"], states


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet_tiny")
    parser.add_argument("--small-stem", action="store_true")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--n-train", type=int, default=120, help="labelled images (quickstart: 1 %% / 10 %% of 1200)")
    parser.add_argument("--samples-per-epoch", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--strategies", nargs="+", default=["end_to_end", "linear"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    quiet_lightning()
    torch.set_num_threads(args.threads)
    data = synthetic2d(size=args.size, n_train=max(args.n_train, 120), n_val=300, n_test=300)
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s); {args.backbone} "
          f"{args.size} px, {args.epochs} epochs of {args.samples_per_epoch} samples, batch {args.batch_size}")
    for strategy in args.strategies:
        times: dict[str, list[float]] = {"every epoch": [], "none": []}
        states = []
        for _ in range(args.repeats):
            for label, every_s in (("every epoch", 0.0), ("none", NEVER_S)):
                with tempfile.TemporaryDirectory() as tmp:
                    fit_s, written = one_run(data, args, strategy, every_s, Path(tmp))
                times[label].append(fit_s)
                states += written
        saving, plain = (statistics.median(times[k]) for k in ("every epoch", "none"))
        per_state = statistics.median(s for s, _ in states)
        epoch_s = plain / args.epochs
        print(f"{strategy:>12}: fit {plain:.2f} s without states, {saving:.2f} s with one per epoch "
              f"({100 * (saving / plain - 1):+.1f} %); one state: {1000 * per_state:.0f} ms, "
              f"{max(b for _, b in states) / 2**20:.1f} MiB = {100 * per_state / epoch_s:.1f} % of an epoch "
              f"({epoch_s:.2f} s); fit times: "
              + "; ".join(f"{k} " + " ".join(f"{t:.2f}" for t in v) for k, v in times.items()))


if __name__ == "__main__":
    main()
