"""End-to-end: every backbone parameter and the head are trained with one learning rate."""

from typing import Literal

from medtransfer.finetune.strategies.base import Strategy


class EndToEnd(Strategy):
    name: Literal["end_to_end"] = "end_to_end"
