"""Read every file of a dataset before training and account for each one that cannot be used.

Loaders hold whole datasets in memory, so this scan *is* the load: each file is read once, and a missing, corrupt,
NaN-holding or wrong-channel file is collected with its reason instead of stopping at the first. ``on_error``
decides what happens next: ``raise`` (default) lists every bad file in one `DataError` before any training step;
``skip`` drops them, logs the list and keeps it in the dataset's description. Either way no bad file can surface
mid-epoch.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Generic, Sequence, TypeVar

import numpy as np

from medtransfer.data.io import UnreadableFile
from medtransfer.errors import DataError, allowed

ON_ERROR = ("raise", "skip")
log = logging.getLogger(__name__)

K = TypeVar("K")


@dataclass
class ScanResult(Generic[K]):
    """The items that were read (in input order), their arrays, and the (path, reason) of every skipped file."""

    items: list[K] = field(default_factory=list)
    arrays: list[dict[str, np.ndarray]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        """One sentence for a dataset description: what was left out and why."""
        if not self.skipped:
            return ""
        return f" Skipped {len(self.skipped)} unusable file(s): " + "; ".join(f"{p} ({r})" for p, r in self.skipped)


def check_on_error(on_error: str, where: str) -> str:
    if on_error not in ON_ERROR:
        raise DataError(f"{where}: on_error={on_error!r}; allowed: {allowed(ON_ERROR)}")
    return on_error


def scan(items: Sequence[K], read: Callable[[K], dict[str, np.ndarray]], on_error: str, where: str,
         channels_key: str | None = "image") -> ScanResult[K]:
    """Apply ``read`` to every item; ``read`` returns named arrays or raises `UnreadableFile`.

    With ``channels_key``, arrays under that key must all share one channel count; files off the most common count
    are reported too (a stray RGB file in a grey-scale folder would otherwise break batching mid-epoch).
    """
    check_on_error(on_error, where)
    if not items:
        raise DataError(f"{where}: no files found; allowed: at least one readable file")
    read_ok: list[tuple[K, dict[str, np.ndarray]]] = []
    bad: list[tuple[str, str]] = []
    for item in items:
        try:
            read_ok.append((item, read(item)))
        except UnreadableFile as e:
            bad.append((e.path, e.reason))
    if channels_key and read_ok:
        counts = Counter(arrays[channels_key].shape[0] for _, arrays in read_ok)
        usual = counts.most_common(1)[0][0]
        kept = []
        for item, arrays in read_ok:
            have = arrays[channels_key].shape[0]
            if have == usual:
                kept.append((item, arrays))
            else:
                bad.append((str(_path_of(item)), f"has {have} channel(s) but most files have {usual}; allowed: "
                                                  f"{usual}, or set `channels` to convert every file"))
        read_ok = kept
    if bad and on_error == "raise":
        lines = "\n".join(f"  {path}: {reason}" for path, reason in bad)
        raise DataError(f"{where}: {len(bad)} of {len(items)} file(s) cannot be used:\n{lines}\nallowed: fix or "
                        "remove them, or set `on_error: skip` to leave them out")
    if bad:
        log.warning("%s: skipped %d unusable file(s):\n%s", where, len(bad),
                    "\n".join(f"  {p}: {r}" for p, r in bad))
    if not read_ok:
        raise DataError(f"{where}: all {len(items)} file(s) are unusable (first: {bad[0][0]}: {bad[0][1]}); "
                        "allowed: at least one readable file")
    return ScanResult([i for i, _ in read_ok], [a for _, a in read_ok], bad)


def _path_of(item) -> object:
    """Items are paths or records with a ``path`` attribute; reports name the file either way."""
    return getattr(item, "path", item)


def stack(arrays: list[dict[str, np.ndarray]], key: str, where: str, template: dict[str, np.ndarray]) -> np.ndarray:
    """Stack one key across files (an empty split gets ``template``'s shape); differing sizes need a ``size``."""
    if not arrays:
        return np.empty((0, *template[key].shape), template[key].dtype)
    shapes = Counter(a[key].shape for a in arrays)
    if len(shapes) > 1:
        raise DataError(f"{where}: {key}s have different shapes {sorted(shapes)}; allowed: one shape (set `size` "
                        "to resize every file to it)")
    return np.stack([a[key] for a in arrays])
