"""medtransfer's fine-tuning loop vs a plain PyTorch loop: same model, data, batch size and work, in one run.

Both loops train for the same epochs on the same uint8 images (normalised on the device), validate every epoch and
score the test split once; medtransfer additionally keeps the best validation checkpoint, logs to CSV and restores
the best weights before testing. Prints seconds and images/s for each and the ratio (medtransfer / plain).

    .venv/bin/python benchmarks/finetune_loop.py                       # CPU defaults
    .venv/bin/python benchmarks/finetune_loop.py --backbone resnet50 --device cuda --epochs 5 --n-train 20000
"""

from __future__ import annotations

import argparse
import logging
import platform
import tempfile
import time

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from medtransfer.bench.runner import quiet_lightning
from medtransfer.config import HardwareConfig, TrainConfig
from medtransfer.data.synthetic import synthetic2d
from medtransfer.data.transforms import Preprocess
from medtransfer.finetune.strategies import parse_strategy
from medtransfer.finetune.train import fine_tune, tensor_dataset
from medtransfer.models.factory import create_backbone
from medtransfer.models.heads import Classifier


def plain_loop(data, args, device) -> float:
    L.seed_everything(0, verbose=False)
    model = Classifier(create_backbone(args.backbone, 1, data.image_size, small_stem=args.small_stem), 3).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    pre = Preprocess(2)
    train = DataLoader(tensor_dataset(data.train), batch_size=args.batch_size, shuffle=True)  # every image, as medtransfer
    evaluate = lambda split: DataLoader(tensor_dataset(split), batch_size=max(256, args.batch_size))  # noqa: E731
    start = time.perf_counter()
    for _ in range(args.epochs):
        model.train()
        for _, x, y in train:
            loss = F.cross_entropy(model(pre(x.to(device), train=True)), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        score(model, evaluate(data.val), pre, device)
    score(model, evaluate(data.test), pre, device)
    _sync(device)
    return time.perf_counter() - start


@torch.no_grad()
def score(model, loader, pre, device):
    model.eval()
    return np.concatenate([torch.softmax(model(pre(x.to(device))), 1).cpu().numpy() for _, x, _ in loader])


def medtransfer_loop(data, args, device) -> float:
    L.seed_everything(0, verbose=False)
    backbone = create_backbone(args.backbone, 1, data.image_size, small_stem=args.small_stem)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, schedule="none")
    hw = HardwareConfig(accelerator="gpu" if device.type == "cuda" else "cpu", precision="32-true")
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        fine_tune(data, np.arange(len(data.train)), backbone, parse_strategy("end_to_end"), "stage", cfg, hw, 0,
                  workdir)
        _sync(device)
        return time.perf_counter() - start


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--small-stem", action="store_true")
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--n-train", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=2, help="alternate the two loops this many times; best kept")
    args = parser.parse_args()
    quiet_lightning()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    device = torch.device(args.device)
    data = synthetic2d(size=args.size, n_train=args.n_train, n_val=args.n_train // 4, n_test=args.n_train // 4)
    images = args.epochs * (len(data.train) + len(data.val)) + len(data.test)
    plain, ours = [], []
    for _ in range(args.repeats):  # alternate, so drift in machine load hits both loops alike
        plain.append(plain_loop(data, args, device))
        ours.append(medtransfer_loop(data, args, device))
    p, m = min(plain), min(ours)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"device {args.device}{' (' + torch.cuda.get_device_name() + ')' if device.type == 'cuda' else ''}, "
          f"torch {torch.__version__}")
    print(f"workload: {args.backbone}{' small-stem' if args.small_stem else ''}, {args.size}px, batch "
          f"{args.batch_size}, {args.epochs} epochs x {len(data.train)} train + val each epoch + test once")
    print(f"plain PyTorch loop : {p:7.2f} s  {images / p:8.0f} img/s")
    print(f"medtransfer loop   : {m:7.2f} s  {images / m:8.0f} img/s")
    print(f"ratio medtransfer/plain time: {m / p:.2f}")


if __name__ == "__main__":
    main()
