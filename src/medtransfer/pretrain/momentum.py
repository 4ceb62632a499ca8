"""Momentum (EMA) encoders for the contrastive methods: a frozen deep copy of online modules, updated after every
optimiser step with lightly's ``update_momentum`` at a cosine-scheduled momentum (base -> 1, BYOL/DINO schedule).

The copy never requires grad, so the driver's optimiser (which takes only ``requires_grad`` parameters) leaves it
out, and the online ``backbone`` stays the module that is saved as the checkpoint.
"""

from __future__ import annotations

import copy

from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule
from torch import nn

from medtransfer.pretrain.base import BaseMethod


def momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen deep copy of ``module`` (weights, buffers and all) to serve as its momentum/teacher twin."""
    twin = copy.deepcopy(module)
    deactivate_requires_grad(twin)
    return twin


def scheduled_momentum(step: int, total_steps: int, base: float) -> float:
    """Momentum at ``step``: cosine from ``base`` at step 0 to 1.0 at the last step."""
    return float(cosine_schedule(step, max(1, total_steps), base, 1.0))


def update_pairs(pairs: list[tuple[nn.Module, nn.Module]], m: float) -> None:
    """EMA update of each (online, momentum) pair's parameters: p_m <- m p_m + (1 - m) p."""
    for online, twin in pairs:
        update_momentum(online, twin, m)


class MomentumMethod(BaseMethod):
    """A method with momentum twins: after each optimiser step, every pair from ``momentum_pairs()`` is updated with
    the momentum scheduled for that step from ``options.momentum`` (kept in ``self.momentum`` for inspection)."""

    def __init__(self, backbone, options, **kwargs):
        super().__init__(backbone, options, **kwargs)
        self.momentum = options.momentum

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        raise NotImplementedError

    def after_step(self, step: int, total_steps: int) -> None:
        super().after_step(step, total_steps)
        self.momentum = scheduled_momentum(step, total_steps, self.options.momentum)
        update_pairs(self.momentum_pairs(), self.momentum)
