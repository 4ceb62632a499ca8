"""Signal 2, the relative gradient norm R(u): Auto-RGN of Lee et al., "Surgical Fine-Tuning Improves Adaptation to
Distribution Shifts" (ICLR 2023), which tunes each layer in proportion to ||g|| / ||w|| because the layers whose
weights the task pulls on hardest, relative to their size, are the ones worth training.

A short end-to-end fine-tuning (new linear head, AdamW at the experiment's learning rate, batches of the experiment's
size drawn from the labelled subset in seeded permutations) records, before every optimizer step, per unit
||g_u|| / ||w_u|| over all the unit's parameters; R(u) is the mean over steps. The loop stops early when ``stop``
(the budget, ``cost.py``) says so, after at least one step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from medtransfer.finetune.module import FineTuner


@dataclass
class GradientProfile:
    rgn: np.ndarray  # R(u), per unit
    steps: int  # optimizer steps taken
    seconds_per_step: float  # median wall time of a training step (the grid's cost estimate uses it)
    stopped_early: bool  # ``stop`` ended the loop before ``steps`` were taken


def unit_rgn(units: list[list[torch.nn.Parameter]]) -> np.ndarray:
    """||g_u|| / ||w_u|| of every unit, from the gradients currently held (a missing gradient counts as zero)."""
    out = []
    for params in units:
        grad = torch.sqrt(sum((p.grad.detach().double() ** 2).sum() for p in params if p.grad is not None)
                          + torch.zeros((), dtype=torch.float64))
        weight = torch.sqrt(sum((p.detach().double() ** 2).sum() for p in params))
        out.append(float(grad / weight) if weight > 0 else float("nan"))
    return np.array(out)


def batch_order(n: int, batch_size: int, steps: int, seed: int) -> list[np.ndarray]:
    """Positions into the labelled subset for each step: consecutive seeded permutations cut into batches."""
    rng = np.random.default_rng(seed)
    need = steps * batch_size
    stream = np.concatenate([rng.permutation(n) for _ in range(-(-need // n))])
    return [stream[k * batch_size:(k + 1) * batch_size] for k in range(steps)]


def gradient_profile(module: FineTuner, view: str, images: torch.Tensor, targets: torch.Tensor, lr: float,
                     batch_size: int, steps: int, seed: int,
                     stop: Callable[[float], bool] = lambda seconds_per_step: False) -> GradientProfile:
    """Fine-tune ``module.model`` end to end on (uint8 ``images``, ``targets``) for up to ``steps`` steps.

    ``stop(seconds_per_step)`` is asked after every step whether another one is affordable; the model is changed
    in place (``shift.py`` reads it).
    """
    model = module.model
    units = model.backbone.unit_parameters(view)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    totals, times, taken = np.zeros(len(units)), [], 0
    for positions in batch_order(len(images), batch_size, steps, seed):
        start = time.perf_counter()
        idx = torch.from_numpy(positions)
        x = module.preprocess(images[idx], train=True)
        loss = module.loss(model(x), targets[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        totals += unit_rgn(units)
        optimizer.step()
        taken += 1
        times.append(time.perf_counter() - start)
        per_step = float(np.median(times[1:] if len(times) > 1 else times))  # the first step pays for warm-up
        if taken < steps and stop(per_step):
            break
    return GradientProfile(totals / taken, taken, per_step, taken < steps)
