"""Bit-identical resume of a pre-training: what Lightning's checkpoint leaves out.

Lightning restores weights, persistent buffers, optimiser, scheduler and loops, but not the random states that draw
the data order and every view, mask and corruption (a resumed run would replay epoch 0's), nor non-persistent
buffers such as lightly's MoCo memory bank (``PretrainModule`` saves those). :class:`RandomStates` carries the
states with fine-tuning's helpers (tensors and plain numbers, so the file loads with ``weights_only=True``).

It rides in the epoch-end checkpoint ``ModelCheckpoint`` writes: by then the epoch has drawn everything (the
validation loader included). A resume puts the loader's generator back as soon as Lightning hands the state over
(before Lightning builds the loader iterator, which draws from it) and the global states at ``on_fit_start``.
"""

from __future__ import annotations

import lightning as L
import torch

from medtransfer.finetune.resume import rng_state, set_rng_state


class RandomStates(L.Callback):
    """Saves the global random states and the loader's ``generator`` in each checkpoint; restores them on a resume.
    ``resumed_from`` lists the epochs this run was resumed at (earlier resumes included), for the metadata."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator
        self.resumed_from: list[int] = []
        self._restored: dict | None = None

    def state_dict(self) -> dict:
        return {"rng": rng_state(self.generator), "resumed_from": list(self.resumed_from)}

    def load_state_dict(self, state: dict) -> None:
        """The loader's generator at once: Lightning builds the resumed epoch's loader iterator (which draws its
        base seed from it) before ``on_fit_start``, and, unlike an uninterrupted run, does not build another."""
        self._restored = state
        self.generator.set_state(state["rng"]["sampler"])

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The global states after Lightning's set-up (which draws), before the resumed epoch's first draw."""
        if self._restored is not None:
            set_rng_state(self._restored["rng"], None)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._restored is not None:  # the first epoch of a resume (``current_epoch`` is restored by now)
            self.resumed_from = [*self._restored["resumed_from"], trainer.current_epoch]
            self._restored = None


def carries_random_states(state: dict) -> bool:
    """Whether a Lightning checkpoint was written with :class:`RandomStates` (older ones cannot resume exactly)."""
    return RandomStates.__qualname__ in (state.get("callbacks") or {})
