"""What every way of executing a grid's runs shares: the threads a run may use.

A run's numbers on CPU depend on how many threads split its reductions, so a run given ``cpus_per_run`` cores
trains with exactly that many torch threads wherever it runs: in this process or in a Ray worker.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Train with ``threads`` intra-op torch threads (None: leave torch's setting), restored afterwards."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
