"""Dataset decoding and the dataset cache vs a plain PIL + numpy loop, in one run.

Generates N textured 1024² 8-bit PNGs ("X-rays") listed in a CSV, then measures at 224 px:

- the `csv` loader's first load (cache empty) with 1 worker and with every core, in images/s, against a plain loop
  (PIL open + the same 8-bit bilinear resize + ``np.stack``) on one core — targets >= 0.7x per core, >= 1.6x on
  2 cores;
- CPU seconds per image of both first loads (workers included): equal CPU means the pool adds no work, so on idle
  cores the wall-clock speed-up approaches the worker count; on a shared machine the wall ratio says how many cores
  were free;
- the second load (a cache hit: memory-mapping) against the first — target >= 50x;
- peak RSS growth while loading, as a slope per image from two fresh processes loading N/2 and N images (1 worker),
  next to the size of one output image (224² bytes) — the cache writes into memory maps, so the slope should be
  about that;
- for context, the pre-cache MONAI path (float32 read, anti-aliased resize) on a small sample.

    .venv/bin/python benchmarks/decode_cache.py            # N=500
    .venv/bin/python benchmarks/decode_cache.py --n 200 --old-sample 10
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

SIZE = 224


def make_pngs(folder: Path, n: int) -> None:
    """Smooth random texture + a vertical gradient + noise, so PNG compression works as on real radiographs."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(30, 200, 1024)[:, None]
    for i in range(n):
        coarse = rng.normal(0, 25, (32, 32)).astype(np.float32)
        texture = np.asarray(Image.fromarray(coarse, "F").resize((1024, 1024), Image.Resampling.BICUBIC))
        pixels = np.clip(ramp + texture + rng.normal(0, 4, (1024, 1024)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"x{i:05d}.png")
    pd.DataFrame({"path": [f"x{i:05d}.png" for i in range(n)], "label": [i % 2 for i in range(n)]}).to_csv(
        folder / "labels.csv", index=False)


def plain_loop(folder: Path, n: int) -> float:
    start = time.perf_counter()
    images = [np.asarray(Image.open(folder / f"x{i:05d}.png").convert("L").resize(
        (SIZE, SIZE), Image.Resampling.BILINEAR, reducing_gap=2.0)) for i in range(n)]
    np.stack(images)
    return time.perf_counter() - start


def timed_load(folder: Path, workers: int | None, csv: str = "labels.csv"):
    from medtransfer.data import forget_loaded_datasets, load_dataset

    forget_loaded_datasets()
    before, start = os.times(), time.perf_counter()
    data = load_dataset("csv", root=str(folder), csv=csv, size=SIZE, workers=workers)
    seconds, after = time.perf_counter() - start, os.times()
    cpu = sum(getattr(after, f) - getattr(before, f) for f in ("user", "system", "children_user", "children_system"))
    return seconds, data, cpu


def rss_growth_child(folder: Path, csv: str, cache: Path) -> float:
    """Peak RSS growth (MB) while a fresh, warmed-up process loads ``csv`` with 1 worker into an empty cache
    (Linux: the peak is reset through /proc/self/clear_refs after imports)."""
    code = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from decode_cache import timed_load
from medtransfer.data.fast2d import decode_image
decode_image(Path(sys.argv[1]) / "x00000.png", None, None, (224, 224), "pad", None, None)
def status(field):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field + ":")) / 1024
open("/proc/self/clear_refs", "w").write("5")
before = status("VmRSS")
timed_load(Path(sys.argv[1]), 1, sys.argv[2])
print(status("VmHWM") - before)
"""
    env = {**os.environ, "MEDTRANSFER_CACHE": str(cache)}
    out = subprocess.run([sys.executable, "-c", code, str(folder), csv, str(Path(__file__).parent)], env=env,
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def old_path(folder: Path, n: int) -> float:
    from medtransfer.data.io import prepare_image, read_image

    start = time.perf_counter()
    for i in range(n):
        path = folder / f"x{i:05d}.png"
        prepare_image(read_image(path), path, (SIZE, SIZE), "pad", None, None)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=500, help="number of 1024² PNGs")
    parser.add_argument("--old-sample", type=int, default=20, help="images decoded by the pre-cache MONAI path")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        folder, cache = Path(tmp) / "pngs", Path(tmp) / "cache"
        folder.mkdir()
        os.environ["MEDTRANSFER_CACHE"] = str(cache)
        from medtransfer.data.cache import clear_entries

        make_pngs(folder, args.n)
        timed_load(folder, 1, "labels.csv")  # imports and first-touch costs outside the timings
        clear_entries()
        plain = plain_loop(folder, args.n)
        one, _, one_cpu = timed_load(folder, 1)
        clear_entries()
        every, first, every_cpu = timed_load(folder, None)
        hit, second, _ = timed_load(folder, None)
        assert np.array_equal(first.train.images, second.train.images) and len(first.train) > 0
        old = old_path(folder, args.old_sample) / args.old_sample * args.n if args.old_sample else float("nan")
        half = args.n // 2
        pd.read_csv(folder / "labels.csv").iloc[:half].to_csv(folder / "half.csv", index=False)
        rss_half = rss_growth_child(folder, "half.csv", Path(tmp) / "cache-half")
        rss_full = rss_growth_child(folder, "labels.csv", Path(tmp) / "cache-full")
    slope_kb = (rss_full - rss_half) * 1024 / (args.n - half)
    rate = lambda seconds: args.n / seconds  # noqa: E731
    print(f"{args.n} PNGs 1024² 8-bit -> {SIZE}², {cores} cores, load average {os.getloadavg()[0]:.1f}")
    print(f"{'measure':<46}{'value':>12}{'ratio':>9}  target")
    rows = [
        ("plain PIL+numpy loop, 1 core (img/s)", rate(plain), 1.0, ""),
        ("csv loader, first load, 1 worker (img/s)", rate(one), plain / one, ">= 0.7x plain"),
        (f"csv loader, first load, {cores} workers (img/s)", rate(every), plain / every,
         ">= 1.6x plain" if cores >= 2 else ""),
        (f"pre-cache MONAI path, est. from {args.old_sample} (img/s)", rate(old), plain / old, "(context)"),
        ("CPU per image, 1 worker (ms)", one_cpu / args.n * 1e3, 1.0, ""),
        (f"CPU per image, {cores} workers + parent (ms)", every_cpu / args.n * 1e3, every_cpu / one_cpu,
         "~1x: no pool overhead"),
        ("second load, cache hit (s)", hit, every / hit, ">= 50x first load"),
        ("peak RSS slope while loading (KB/image)", slope_kb, slope_kb / (SIZE * SIZE / 1024),
         f"~1x output ({SIZE * SIZE / 1024:.0f} KB/image)"),
    ]
    for name, value, ratio, target in rows:
        print(f"{name:<46}{value:>12.3f}{ratio:>8.2f}x  {target}")


if __name__ == "__main__":
    main()
