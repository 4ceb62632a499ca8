"""What happens to files that cannot be used: every one is accounted for before training.

Loaders hold whole datasets in memory, so decoding (`data.decode`) reads every file before any training step; a
missing, corrupt, NaN-holding or wrong-channel file is collected with its reason instead of stopping at the first.
``on_error`` decides what happens next: ``raise`` (default) lists every bad file in one `DataError` before any
training step; ``skip`` drops them, logs the list and keeps it in the dataset's description. Either way no bad file
can surface mid-epoch.
"""

from __future__ import annotations

import logging
from typing import Sequence

from medtransfer.errors import DataError, allowed

ON_ERROR = ("raise", "skip")
log = logging.getLogger(__name__)


def check_on_error(on_error: str, where: str) -> str:
    if on_error not in ON_ERROR:
        raise DataError(f"{where}: on_error={on_error!r}; allowed: {allowed(ON_ERROR)}")
    return on_error


def report_unusable(bad: Sequence[tuple[str, str]], total: int, on_error: str, where: str) -> None:
    """Raise on unusable files (listing every one) under ``raise``, log them under ``skip``; raise if none is left."""
    if bad and on_error == "raise":
        lines = "\n".join(f"  {path}: {reason}" for path, reason in bad)
        raise DataError(f"{where}: {len(bad)} of {total} file(s) cannot be used:\n{lines}\nallowed: fix or "
                        "remove them, or set `on_error: skip` to leave them out")
    if bad:
        log.warning("%s: skipped %d unusable file(s):\n%s", where, len(bad),
                    "\n".join(f"  {p}: {r}" for p, r in bad))
    if len(bad) == total:
        raise DataError(f"{where}: all {total} file(s) are unusable (first: {bad[0][0]}: {bad[0][1]}); "
                        "allowed: at least one readable file")
