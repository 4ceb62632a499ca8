"""Self-supervised pre-training methods: a plain registry, one line per method."""

from medtransfer.pretrain.base import BaseMethod
from medtransfer.pretrain.simclr import SimCLR

METHODS: dict[str, type[BaseMethod]] = {
    "simclr": SimCLR,
}

__all__ = ["METHODS", "BaseMethod"]
