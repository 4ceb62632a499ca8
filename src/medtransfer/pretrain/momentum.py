"""Momentum (EMA) encoders for the contrastive methods: a frozen deep copy of online modules, updated after every
optimiser step with lightly's ``update_momentum`` at a cosine-scheduled momentum (base -> 1, BYOL/DINO schedule).

The copy never requires grad, so ``BaseMethod.configure_optimizers`` (which takes only ``requires_grad`` parameters)
leaves it out of the optimiser, and the online ``backbone`` stays the module that is saved as the checkpoint.
"""

from __future__ import annotations

import copy

from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule
from torch import nn


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


class MomentumMixin:
    """Adds ``on_train_batch_end``: after each optimiser step, update every pair from ``momentum_pairs()`` with the
    scheduled momentum from ``options.momentum``. Put it before ``BaseMethod`` in the bases."""

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        raise NotImplementedError

    def current_momentum(self) -> float:
        """Momentum for the optimiser step just taken (global_step has already counted it): base at the first."""
        step = max(0, self.global_step - 1)
        return scheduled_momentum(step, self.trainer.estimated_stepping_batches, self.options.momentum)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        super().on_train_batch_end(outputs, batch, batch_idx)
        update_pairs(self.momentum_pairs(), self.current_momentum())
