"""Where medtransfer keeps what it can rebuild: decoded datasets, zoo weights, frozen features.

One root for every cache, so a user moves or clears all of it with one variable (``MEDTRANSFER_CACHE``, default
``~/.cache/medtransfer``); each kind of entry lives in its own folder under it (``datasets/``, ``zoo/``, ...).
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """The cache root: ``$MEDTRANSFER_CACHE`` when set, else ``~/.cache/medtransfer`` (not created here)."""
    base = os.environ.get("MEDTRANSFER_CACHE")
    return Path(base).expanduser() if base else Path.home() / ".cache" / "medtransfer"


def datasets_root() -> Path:
    """Decoded datasets, one folder per key (see `medtransfer.data.cache`)."""
    return cache_root() / "datasets"
