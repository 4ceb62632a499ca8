"""Reproduce cells of the MedMNIST v2 table (Yang et al., Scientific Data 10:41, 2023) and print them beside it.

Any MedMNIST datasets and seeds in one resumable experiment per kind (2D and 3D datasets may be mixed: each kind is
its own experiment folder). 2D: ResNet-18/50 "(28)" (small stem, 28 px) or "(224)" (standard stem, upsampled);
3D: ResNet-18/50 with 3D convolutions on 28^3 (or 64^3) volumes. The schedule, selection and metrics are the
reference loop's (``medtransfer.bench.medmnist_protocol``); ``--epochs`` shortens it for smoke runs (milestones stay
at 50 % and 75 %). A finished run is never trained again; a run killed mid-way resumes from its last resume state
(``hardware.resume_every_s``, by default at most a minute old) with the numbers of an uninterrupted run.

    python benchmarks/medmnist_protocol.py --root ../shared/data/medmnist --datasets pneumoniamnist --seeds 0 1 2
    python benchmarks/medmnist_protocol.py --root ../shared/data/medmnist --datasets adrenalmnist3d --seeds 0
    python benchmarks/medmnist_protocol.py --readme README.md --tables runs/medmnist-v2-resnet18-28-100ep ...

``--readme`` trains nothing: it rewrites README's protocol table from stored results (the folders given).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

from medtransfer.bench.medmnist_protocol import (ARCHS, VARIANTS, VOLUME_SIZES, comparison, format_comparison,
                                                 format_details, is_3d, protocol_config)
from medtransfer.bench.runner import run_experiment
from medtransfer.bench.store import ResultStore
from medtransfer.errors import MedtransferError
from medtransfer.interrupts import Interrupted, signals_interrupt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from readme_tables import machine, rewrite  # noqa: E402  (a sibling script, not a package)

DEFAULT_ROOT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "medmnist"
START = "<!-- medmnist-protocol-table: start (written by benchmarks/medmnist_protocol.py --readme; do not edit) -->"
END = "<!-- medmnist-protocol-table: end -->"


def stored_rows(folders: list[Path]) -> pd.DataFrame:
    """Finished runs of every folder, one frame (folders without a results store are an error, not skipped)."""
    frames = []
    for folder in folders:
        if not (folder / "results.sqlite").exists():
            raise MedtransferError(f"{folder}: no results.sqlite; run the protocol into it first")
        frames.append(ResultStore(folder).rows())
    rows = pd.concat(frames, ignore_index=True)
    if rows.empty:
        raise MedtransferError(f"no finished run in {', '.join(map(str, folders))}")
    return rows


def readme_block(rows: pd.DataFrame) -> str:
    """What goes between the README markers: the comparison, the machine and the reference details."""
    return (f"{format_comparison(comparison(rows))}\n\nMachine: {machine()}.\n\n"
            f"Reference details, followed or not:\n\n{format_details()}")


def run(args) -> list[Path]:
    """Train every unfinished run, one experiment per kind (2D, 3D); print the comparison; return the folders."""
    kinds = {kind: [d for d in args.datasets if is_3d(d) == kind] for kind in (False, True)}
    folders, failed = [], []
    for three_d, datasets in kinds.items():
        if not datasets:
            continue
        cfg = protocol_config(datasets, args.root, args.arch, args.variant, args.seeds, args.epochs,
                              args.volume_size, args.device, args.backbone)
        folder = args.output / cfg.name
        start = time.perf_counter()
        summary = run_experiment(cfg, folder)
        print(f"{cfg.name}: {summary.done} run(s) trained, {summary.skipped} already finished, "
              f"{(time.perf_counter() - start) / 60:.1f} min wall time this invocation; {folder.resolve()}")
        folders.append(folder)
        failed += summary.failed
    print(f"\n{format_comparison(comparison(stored_rows(folders)))}\n\nMachine: {machine()}")
    if args.epochs != 100:
        print(f"Shortened schedule ({args.epochs} epochs): not comparable with the paper's 100.")
    print(f"\n{format_details()}")
    if failed:
        sys.exit(f"{len(failed)} run(s) failed: {failed}")
    return folders


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["pneumoniamnist"], help="medmnist flags, 2D and/or 3D")
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="folder of the .npz files")
    parser.add_argument("--arch", choices=ARCHS, default="resnet18")
    parser.add_argument("--variant", choices=VARIANTS, default="28", help="2D: (28) or (224)")
    parser.add_argument("--volume-size", type=int, choices=VOLUME_SIZES, default=28, help="3D volume files")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=100, help="100 = the protocol; fewer = a smoke run")
    parser.add_argument("--output", type=Path, default=Path("runs"), help="parent of the experiment folders")
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    parser.add_argument("--backbone", help="replace the architecture (e.g. resnet_tiny for a quick check)")
    parser.add_argument("--readme", type=Path, help="rewrite this README's protocol table from --tables; no training")
    parser.add_argument("--tables", type=Path, nargs="+", help="experiment folders for --readme")
    args = parser.parse_args(argv)
    try:
        with signals_interrupt():  # as `medtransfer run`: the run in flight is stored `interrupted`, not left running
            _protocol(args)
    except MedtransferError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Interrupted) as err:
        how = f" by {err}" if isinstance(err, Interrupted) else ""
        print(f"\ninterrupted{how}: finished work is stored; run the same command again to continue", file=sys.stderr)
        return 130
    return 0


def _protocol(args) -> None:
    """Train (``run``), or only rewrite README's table from stored results."""
    if not args.readme:
        run(args)
        return
    if not args.tables:
        raise MedtransferError("--readme needs --tables FOLDER [FOLDER ...] (the experiment folders)")
    block = readme_block(stored_rows(args.tables))
    args.readme.write_text(rewrite(args.readme.read_text(encoding="utf-8"), block, START, END), encoding="utf-8")
    print(f"rewrote the MedMNIST protocol table in {args.readme}")


if __name__ == "__main__":
    sys.exit(main())
