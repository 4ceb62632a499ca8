"""Pre-training throughput and peak memory of every SSL method vs the plain forward/backward of the same backbone.

Each measurement runs in a fresh process (so peak RSS on CPU is that measurement's own) on the same random batch:
the baseline is backbone + linear head + cross-entropy, forward/backward/step; a method is its full training step
(views or corruptions made on the device, heads, momentum updates). Prints images (or volumes)/s, the ratio to the
baseline, and peak memory (CUDA: max allocated; CPU: peak RSS of the process).

    .venv/bin/python benchmarks/pretrain_throughput.py                          # 2D, resnet18 at 64 px, CPU
    .venv/bin/python benchmarks/pretrain_throughput.py --backbone resnet18_3d --size 32 --batch 8
    .venv/bin/python benchmarks/pretrain_throughput.py --device cuda --backbone resnet50 --size 224 --batch 128
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time

import torch


def measure(args, method_name: str | None, queue) -> None:
    from medtransfer.models.factory import create_backbone
    from medtransfer.pretrain import METHODS

    torch.manual_seed(0)
    device = torch.device(args.device)
    backbone = create_backbone(args.backbone, 1, args.size, small_stem=args.small_stem)
    images = torch.rand(args.batch, 1, *backbone.input_size, device=device)
    if method_name is None:
        head = torch.nn.Linear(backbone.num_features, 10)
        model = torch.nn.Sequential(backbone, head).to(device)
        labels = torch.randint(0, 10, (args.batch,), device=device)
        step_loss = lambda: torch.nn.functional.cross_entropy(model((images - 0.5) / 0.5), labels)  # noqa: E731
        params = model.parameters()
        after_backward, after_step = (lambda: None), (lambda i, n: None)
    else:
        method_cls = METHODS[method_name]
        if method_cls.unsupported(backbone):
            queue.put((method_name, None, None, method_cls.unsupported(backbone)))
            return
        method = method_cls(backbone, method_cls.Options(), views={}).to(device)
        step_loss = lambda: method.ssl_loss(images)  # noqa: E731
        params = [p for p in method.parameters() if p.requires_grad]
        after_backward, after_step = method.after_backward, method.after_step  # as the training driver calls them
    opt = torch.optim.AdamW(params, lr=1e-4)
    total = args.warmup + args.steps

    def step(i):
        loss = step_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        after_backward()
        opt.step()
        after_step(i, total)

    for i in range(args.warmup):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for i in range(args.warmup, total):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak_mb = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
               else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    queue.put((method_name, args.steps * args.batch / seconds, peak_mb, None))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--small-stem", action="store_true")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--methods", nargs="*", help="default: every registered method")
    args = parser.parse_args()
    from medtransfer.pretrain import METHODS

    ctx = mp.get_context("spawn")
    results = {}
    for name in [None] + (args.methods or list(METHODS)):
        queue = ctx.Queue()
        process = ctx.Process(target=measure, args=(args, name, queue))
        process.start()
        process.join()
        results[name] = queue.get() if not queue.empty() else (name, None, None, f"exit code {process.exitcode}")
    base = results[None][1]
    from medtransfer.models.factory import backbone_spec

    print(f"{args.backbone} {backbone_spec(args.backbone).spatial_dims}D {args.size}px, batch {args.batch}, {args.steps} timed steps, {args.device}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'method':<16}{'img/s':>10}{'x baseline':>12}{'peak MB':>10}")
    print(f"{'baseline':<16}{base:>10.1f}{1.0:>12.2f}{results[None][2]:>10.0f}")
    for name, (_, rate, peak, problem) in results.items():
        if name is not None:
            print(f"{name:<16}" + (f"{rate:>10.1f}{rate / base:>12.2f}{peak:>10.0f}" if rate else f"  skipped: {problem}"))


if __name__ == "__main__":
    main()
