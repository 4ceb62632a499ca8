"""``medtransfer recommend``: which depth to fine-tune, predicted from cheap probes before the grid runs."""

from medtransfer.recommend.run import recommend

__all__ = ["recommend"]
