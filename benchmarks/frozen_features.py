"""``linear`` on cached frozen features vs the per-epoch path, and ``knn`` beside them, on PneumoniaMNIST.

The per-epoch path runs the frozen backbone over train and val every epoch; the cached path runs it once over every
split (``medtransfer.finetune.features``) and trains the same head, with the same seed, order and selection, on the
stored features. Both start from the same (seeded, random) ResNet-18 small-stem init. ``--fraction`` keeps that
share of every split (same images for both paths), ``--epochs`` sets the schedule; the speed-up grows with epochs.
``--strategies`` compares other strategies the same way, e.g. ``q4``, whose frozen prefix (stem to layer3) is
cached. Prints wall seconds and test/val AUC per path; the feature cache lives in a temporary folder, so the first
cached run of each strategy pays its extraction.

    .venv/bin/python benchmarks/frozen_features.py                          # full PneumoniaMNIST, 10 epochs
    .venv/bin/python benchmarks/frozen_features.py --fraction 0.1 --epochs 10
    .venv/bin/python benchmarks/frozen_features.py --fraction 0.05 --strategies q4
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch

from medtransfer.bench.runner import quiet_lightning
from medtransfer.config import HardwareConfig, TrainConfig
from medtransfer.data.base import SPLITS, Split
from medtransfer.data.medmnist import load_medmnist
from medtransfer.finetune.strategies import parse_strategy
from medtransfer.finetune.train import fine_tune
from medtransfer.models.factory import create_backbone


def subsample(data, fraction: float, seed: int):
    """The same random share of every split (at least 8 images each), so both paths see identical data."""
    if fraction >= 1:
        return data
    rng = np.random.default_rng(seed)

    def part(split: Split) -> Split:
        keep = np.sort(rng.choice(len(split), max(8, round(fraction * len(split))), replace=False))
        return Split(split.images[keep], split.labels[keep])
    return dataclasses.replace(data, **{s: part(getattr(data, s)) for s in SPLITS}).validate()


def timed_run(data, args, strategy, workdir: Path, frozen_features: bool = True):
    L.seed_everything(args.seed, verbose=False)
    backbone = create_backbone(args.backbone, data.in_chans, data.image_size, small_stem=args.small_stem)
    train = TrainConfig(epochs=args.epochs, batch_size=args.batch_size)
    start = time.perf_counter()
    result = fine_tune(data, np.arange(len(data.train)), backbone, parse_strategy(strategy), backbone.default_view,
                       train, HardwareConfig(accelerator=args.accelerator), args.seed, workdir,
                       frozen_features=frozen_features)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="../shared/data/medmnist", help="folder holding pneumoniamnist.npz")
    parser.add_argument("--fraction", type=float, default=1.0, help="share of every split to use")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--no-small-stem", dest="small_stem", action="store_false")
    parser.add_argument("--accelerator", default="auto", help="auto | cpu | gpu")
    parser.add_argument("--strategies", default="linear", help="comma-separated, per epoch vs cached (knn beside)")
    parser.add_argument("--k", type=int, default=20, help="neighbours of the knn run")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    quiet_lightning()
    data = subsample(load_medmnist("pneumoniamnist", root=args.root), args.fraction, args.seed)
    print(f"PneumoniaMNIST 28px x {args.fraction:g}: train {len(data.train)}, val {len(data.val)}, test "
          f"{len(data.test)}; {args.backbone} small_stem={args.small_stem}, {args.epochs} epochs, batch "
          f"{args.batch_size}, seed {args.seed}; {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, cuda={torch.cuda.is_available()}")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MEDTRANSFER_CACHE"] = str(Path(tmp) / "cache")  # an empty cache: extraction is paid once
        rows = []
        for strategy in args.strategies.split(","):
            per_epoch = timed_run(data, args, strategy, Path(tmp) / f"{strategy}-a", frozen_features=False)
            rows += [(f"{strategy}, per epoch", *per_epoch, per_epoch[0]),
                     (f"{strategy}, cached (extracted)", *timed_run(data, args, strategy, Path(tmp) / f"{strategy}-b"),
                      per_epoch[0]),
                     (f"{strategy}, cached (cache hit)", *timed_run(data, args, strategy, Path(tmp) / f"{strategy}-c"),
                      per_epoch[0])]
        knn = timed_run(data, args, {"name": "knn", "k": args.k}, Path(tmp) / "knn")
        paid = "cache hit" if "linear" in args.strategies.split(",") else "extracted"
        rows.append((f"knn k={args.k} ({paid})", *knn, rows[0][-1]))
    print(f"{'path':38s} {'wall s':>8s} {'speed-up':>9s} {'test AUC':>9s} {'val AUC':>8s} {'best ep':>8s}")
    for name, seconds, result, base in rows:
        print(f"{name:38s} {seconds:8.1f} {base / seconds:8.1f}x {result.metrics['auc']:9.4f} "
              f"{result.val_metrics['auc']:8.4f} {result.best_epoch:8d}")


if __name__ == "__main__":
    main()
