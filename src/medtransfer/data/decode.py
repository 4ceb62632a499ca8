"""Decode a dataset's files once, on every core, straight into the dataset cache; later loads memory-map it.

`decode` is what file-based loaders call instead of reading file by file: it looks the files up in the cache
(`data.cache`) and, on a miss, reads them in a process pool (``workers``), writing each result directly into
per-split ``.npy`` memory maps of the staging entry. Memory while decoding is therefore the output arrays plus the
images in flight (a bounded window of tasks), never a list of every image plus its stacked copy.

The rules of `scan` hold unchanged, hit or miss: every unusable file (unreadable, or off the most common channel
count) is reported before training, and ``on_error`` raises on them or skips them; skipped files are stored in the
entry, so a cached load reports them again.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections import Counter, deque
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Iterator, Sequence, TypeVar

import numpy as np

from medtransfer.data import cache
from medtransfer.data.base import SPLITS
from medtransfer.data.io import UnreadableFile
from medtransfer.data.scan import check_on_error, report_unusable
from medtransfer.errors import DataError

K = TypeVar("K")
IN_FLIGHT_PER_WORKER = 4  # tasks queued per worker: keeps every core busy without buffering the dataset
MAX_CHUNK = 8  # files per task at most, so in flight are at most workers * 4 * 8 images


def check_workers(workers: int | None, where: str) -> int:
    """``workers``: processes decoding files; None = every core this process may use."""
    if workers is None:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise DataError(f"{where}: workers={workers!r}; allowed: a positive integer, or null for every core")
    return workers


def decode(items: Sequence[K], read: Callable[[K], dict[str, np.ndarray]], splits: Sequence[str],
           files: Sequence[Sequence[Path]], on_error: str, where: str, workers: int | None) -> cache.Entry:
    """Decoded arrays of ``items`` (each in split ``splits[i]``, read from ``files[i]``) from the cache, or read now.

    ``read`` must be picklable (a module-level function or a partial of one) — it runs in worker processes — and is
    part of the cache key together with its arguments.
    """
    check_on_error(on_error, where)
    workers = check_workers(workers, where)
    if not items:
        raise DataError(f"{where}: no files found; allowed: at least one readable file")
    key = cache.entry_key(where, read, files, splits)
    entry = cache.open_entry(key)
    if entry is None:
        with cache.staging(key) as folder:
            indices, names, skipped = _decode_into(folder, items, read, splits, files, on_error, where, workers)
            cache.publish(folder, key, where, indices, names, skipped)
        entry = cache.open_entry(key)
        if entry is None:
            raise DataError(f"{where}: the dataset cache entry {cache.datasets_root() / key} cannot be read back "
                            "after writing it; allowed: a writable, local MEDTRANSFER_CACHE folder")
    else:
        report_unusable(entry.skipped, len(items), on_error, where)
    return entry


def _attempt(read, item):
    """The arrays, or the (path, reason) of an unusable file (plain tuples pickle reliably)."""
    try:
        return read(item)
    except UnreadableFile as e:
        return (e.path, e.reason)


def _attempt_all(read, chunk: list) -> list:
    """Run in a worker: several files per task, so inter-process overhead stays small next to decoding."""
    return [_attempt(read, item) for item in chunk]


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)  # MONAI resizes with torch: one thread per worker process, not cores² threads


def _results(items: Sequence[K], read, workers: int) -> Iterator:
    """Results of ``read`` in item order; with several workers from a process pool, at most a window in flight."""
    if workers == 1 or len(items) < 2 * workers:  # starting processes costs more than a handful of files
        for item in items:
            yield _attempt(read, item)
        return
    # The first file is decoded here, so the readers it imports (MONAI, ITK ...) are imported once, before the
    # workers fork, rather than once in every worker.
    yield _attempt(read, items[0])
    # fork on Linux: workers inherit the imports; elsewhere (macOS: fork is unsafe) the platform default, spawn
    context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else None)
    rest = list(items[1:])
    size = max(1, min(MAX_CHUNK, len(rest) // (workers * IN_FLIGHT_PER_WORKER)))
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_one_thread) as pool:
        pending: deque = deque()
        for start in range(0, len(rest), size):
            pending.append(pool.submit(_attempt_all, read, rest[start:start + size]))
            if len(pending) >= workers * IN_FLIGHT_PER_WORKER:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()


class _Sink:
    """Per split and array name, one ``.npy`` memory map with a row for every item of that split."""

    def __init__(self, folder: Path, splits: Sequence[str], template: dict[str, np.ndarray]):
        self.folder, self.template = folder, {k: (v.shape, v.dtype) for k, v in template.items()}
        self.rows = {s: n for s, n in Counter(splits).items()}
        self.maps = {s: {k: np.lib.format.open_memmap(folder / f"{s}.{k}.npy", "w+", dtype, (self.rows.get(s, 0),
                                                                                              *shape))
                         for k, (shape, dtype) in self.template.items()} for s in SPLITS}
        self.written: dict[str, list[tuple[int, int]]] = {s: [] for s in SPLITS}  # (row, item position)

    def fits(self, arrays: dict[str, np.ndarray]) -> bool:
        return {k: (v.shape, v.dtype) for k, v in arrays.items()} == self.template

    def put(self, split: str, row: int, position: int, arrays: dict[str, np.ndarray]) -> None:
        for name, array in arrays.items():
            self.maps[split][name][row] = array
        self.written[split].append((row, position))

    def finish(self) -> tuple[dict[str, np.ndarray], dict[str, dict[str, str]]]:
        """Flush, drop the rows of unusable files (copying the kept rows to a shorter file), and name the files."""
        indices, names = {}, {}
        for split in SPLITS:
            done = sorted(self.written[split])
            indices[split] = np.array([p for _, p in done], np.int64)
            names[split] = {}
            for name, rows in self.maps[split].items():
                file = self.folder / f"{split}.{name}.npy"
                if len(done) < len(rows):
                    kept = np.lib.format.open_memmap(file.with_suffix(".kept"), "w+", rows.dtype,
                                                     (len(done), *rows.shape[1:]))
                    for target, (row, _) in enumerate(done):
                        kept[target] = rows[row]
                    kept.flush()
                    del kept
                    os.replace(file.with_suffix(".kept"), file)
                else:
                    rows.flush()
                names[split][name] = file.name
        self.maps.clear()
        return indices, names


def _decode_into(folder: Path, items, read, splits: Sequence[str], files, on_error: str, where: str,
                 workers: int) -> tuple[dict[str, np.ndarray], dict[str, dict[str, str]], list[tuple[str, str]]]:
    """Read every item into memory maps under ``folder``; apply the unusable-file rules of `scan`."""
    rank = {}
    seen: Counter = Counter()
    for position, split in enumerate(splits):
        rank[position], seen[split] = seen[split], seen[split] + 1
    sink: _Sink | None = None
    held: list[tuple[int, dict[str, np.ndarray]]] = []  # results that do not fit the first file's shapes (rare)
    channels: dict[int, int] = {}
    unreadable: list[tuple[str, str]] = []
    for position, result in enumerate(_results(items, read, workers)):
        if isinstance(result, tuple):
            unreadable.append(result)
            continue
        channels[position] = result["image"].shape[0]
        if sink is None:
            sink = _Sink(folder, splits, result)
        if sink.fits(result):
            sink.put(splits[position], rank[position], position, result)
        else:
            held.append((position, result))
    if sink is None:
        report_unusable(unreadable, len(items), on_error, where)  # every file is unusable: raises
    usual = Counter(channels.values()).most_common(1)[0][0]
    if sink.template["image"][0][0] != usual:  # the first file was the odd one out: start over from the others
        sink = _Sink(folder, splits, next(r for p, r in held if channels[p] == usual))
    off = [p for p in channels if channels[p] != usual]
    mismatched = []
    for position, result in held:
        if channels[position] != usual:
            continue
        if not sink.fits(result):
            mismatched.append(position)
            continue
        sink.put(splits[position], rank[position], position, result)
    if mismatched:
        shapes = sorted({tuple(v.shape) for p, r in held if p in mismatched for v in r.values()})
        raise DataError(f"{where}: {Path(files[mismatched[0]][0]).name} and {len(mismatched) - 1} more have arrays "
                        f"of shape {shapes[:3]} but others {[s for s, _ in sink.template.values()]}; allowed: one "
                        "shape (set `size` to resize every file to it)")
    bad = unreadable + [(str(files[p][0]), f"has {channels[p]} channel(s) but most files have {usual}; allowed: "
                                           f"{usual}, or set `channels` to convert every file") for p in off]
    report_unusable(bad, len(items), on_error, where)
    indices, names = sink.finish()
    return indices, names, bad
