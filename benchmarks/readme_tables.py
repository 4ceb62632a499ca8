"""Rewrite README's demo table from the demo's results store, so the README shows what the code produces.

The table between the ``demo-table`` marker comments in README.md is replaced by what ``medtransfer results`` prints
for the folder (warnings included), followed by the machine it ran on: CPU model, cores and torch build. Seeded runs
are bit-identical on one machine, not across CPUs or torch builds, so a table without its machine is not a claim
anyone can check.

    make demo && .venv/bin/python benchmarks/readme_tables.py      # reads runs/quickstart, rewrites README.md
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import pandas as pd

from medtransfer.bench.store import ResultStore
from medtransfer.errors import MedtransferError
from medtransfer.report.coverage import finished_runs
from medtransfer.report.integrity import format_warnings
from medtransfer.report.tables import format_table, summary_table

START = "<!-- demo-table: start (written by benchmarks/readme_tables.py from runs/quickstart; do not edit) -->"
END = "<!-- demo-table: end -->"


def cpu_model(cpuinfo: str) -> str:
    """The first "model name" of /proc/cpuinfo text (x86 and most ARM kernels), else the platform's processor."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            return " ".join(value.split())
    return platform.processor() or platform.machine()


def machine() -> str:
    """"<CPU model>, <n> cores available (<m> in the machine), torch <version> (<build>)" for this process."""
    import torch

    info = Path("/proc/cpuinfo")
    cpu = cpu_model(info.read_text(encoding="utf-8", errors="replace") if info.exists() else "")
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU build"
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return (f"{cpu}, {available} cores available ({os.cpu_count()} in the machine){gpu}, torch {torch.__version__} "
            f"({build}, {torch.get_num_threads()} threads), Python {platform.python_version()}")


def demo_block(rows: pd.DataFrame, metric: str, machine_text: str) -> str:
    """The Markdown that goes between the markers: the results table, any warnings, the machine and compute time."""
    done = finished_runs(rows)
    if done.empty:
        raise MedtransferError("no finished run in the demo folder; run `make demo` first")
    printed = format_table(summary_table(rows, metric), metric)
    warnings = format_warnings(done)
    seconds = sum(t.get("fit_s", 0.0) + t.get("test_s", 0.0) for t in done["timings"] if isinstance(t, dict))
    return (f"```\n{printed}\n" + (f"\n{warnings}\n" if warnings else "") + "```\n\n"
            f"Machine: {machine_text}. {len(done)} finished fine-tuning runs, {seconds:.0f} s of fit + test summed "
            "over them (pre-training not counted).")


def rewrite(readme: str, block: str, start: str = START, end: str = END) -> str:
    """``readme`` with the text between ``start`` and ``end`` replaced by ``block`` (the rest kept byte for byte)."""
    if readme.count(start) != 1 or readme.count(end) != 1 or readme.index(start) > readme.index(end):
        raise MedtransferError(f"README needs exactly one {start!r} line followed by one {end!r} line")
    head, rest = readme.split(start)
    _, tail = rest.split(end)
    return f"{head}{start}\n{block.strip()}\n{end}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", type=Path, default=Path("runs/quickstart"), help="the demo's experiment folder")
    parser.add_argument("--readme", type=Path, default=Path("README.md"))
    parser.add_argument("--metric", default="auc")
    args = parser.parse_args(argv)
    try:
        if not (args.folder / "results.sqlite").exists():
            raise MedtransferError(f"{args.folder}: no results.sqlite; run `make demo` first")
        rows = ResultStore(args.folder).rows(status=None)
        args.readme.write_text(rewrite(args.readme.read_text(encoding="utf-8"),
                                       demo_block(rows, args.metric, machine())), encoding="utf-8")
    except MedtransferError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"rewrote the demo table in {args.readme} from {args.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
