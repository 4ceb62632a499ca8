"""Mid-run resume of fine-tuning: a run killed after epoch k continues at epoch k and stores exactly the numbers
of the same run never interrupted.

Lightning's checkpoint restores the model, optimiser, scheduler, loops and callbacks (best-checkpoint score,
early stopping), but not what decides the data order and the random draws of training: the sampler's seeded
generator and the global torch/numpy/python (and CUDA) random states. :class:`ResumeState` saves them beside
Lightning's state, as tensors and plain numbers so the file stays loadable with ``weights_only=True``.

It saves at the *start* of an epoch, when the previous epoch has finished everything — scheduler step, logging,
checkpoint selection — and before the epoch's data order is drawn; a checkpoint saved at validation end (what
``ModelCheckpoint`` does) precedes the epoch's scheduler step and log rows, which a resume would then skip.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import time
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch

from medtransfer.config import TrainConfig
from medtransfer.errors import CheckpointError

STATE_FILE = Path("resume") / "last.ckpt"  # in the run's workdir, which the run id names
LOG_BEFORE = "metrics.before_resume.csv"  # rows of epochs before the resume point, while a resumed run trains


def check_loadable(path: Path, start_over: str) -> dict:
    """The checkpoint at ``path``, read with ``weights_only=True`` only; anything else is refused unread, because
    whoever can write the folder could otherwise run code in the next run. Refused with an error, not restarted
    over: an unreadable state means tampering or corruption, which a silent restart would hide while discarding the
    epochs trained (the state is written to a temporary file and renamed, so a kill never leaves half a file)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types; each means "not read safely"
        needs = re.search(r"GLOBAL (\S+)", str(err))  # both of torch's wordings
        why = f"it pickles {needs.group(1)}" if needs else f"{type(err).__name__}: truncated or corrupt"
        raise CheckpointError(f"{path}: refused as resume state, it is not loadable with weights_only=True ({why});"
                              f" {start_over}") from err


def run_stamp(train: TrainConfig, seed: int, n_train: int, n_val: int) -> str:
    """What a resume state must have been written by: the same training settings, seed and data sizes."""
    settings = json.dumps(train.model_dump(mode="json", exclude={"keep_checkpoints"}), sort_keys=True)
    return f"seed {seed}, train {hashlib.sha256(settings.encode()).hexdigest()[:12]}, {n_train} / {n_val} examples"


def rng_state(generator: torch.Generator | None) -> dict:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                       "has_gauss": int(np_state[3]), "gauss": float(np_state[4])}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["sampler"] = generator.get_state()
    return state


def set_rng_state(state: dict, generator: torch.Generator | None) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["gauss"]))
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None:
        generator.set_state(state["sampler"])


class ResumeState(L.Callback):
    """Writes ``workdir/resume/last.ckpt`` at the start of an epoch, at most every ``every_s`` seconds (0: every
    epoch), and on a resume puts the random states back before the epoch draws anything.

    ``stamp`` names what must match for a state to be this run's (seed, schedule, data sizes): the workdir is the
    run id's own, so a mismatch means a foreign or stale file. ``earlier_s`` and ``resumed_from`` carry the fit time
    of earlier attempts and the epochs each resume started at, so a result says it was resumed.
    """

    def __init__(self, workdir: Path, generator: torch.Generator | None, stamp: str, every_s: float):
        self.path, self.generator, self.stamp, self.every_s = Path(workdir) / STATE_FILE, generator, stamp, every_s
        self.started = self.last_saved = time.perf_counter()
        self.earlier_s = 0.0
        self.resumed_from: list[int] = []
        self._restored: dict | None = None

    def state_dict(self) -> dict:
        return {"stamp": self.stamp, "rng": rng_state(self.generator), "resumed_from": list(self.resumed_from),
                "fit_s": self.earlier_s + time.perf_counter() - self.started}

    def load_state_dict(self, state: dict) -> None:
        self._restored = state

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Put a resumed run's random states back: after Lightning has set up (and drawn from them), before the
        first epoch's data order is drawn, which happens before ``on_train_epoch_start`` on a resume."""
        self.started = self.last_saved = time.perf_counter()
        if self._restored is not None:
            set_rng_state(self._restored["rng"], self.generator)
            self.earlier_s = float(self._restored["fit_s"])

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._restored is not None:  # this epoch starts where the state was saved: nothing new to save
            self.resumed_from = [*self._restored["resumed_from"], trainer.current_epoch]
            self._restored = None
            # The state was saved between two epochs, so the epoch loop has nothing to restart: it starts this epoch
            # afresh, as in a run never interrupted (restarting, it would count its last batch again, e.g. as a
            # skipped extra step that shifts every later logged step by one).
            trainer.fit_loop.epoch_loop.restarting = False
            return
        now = time.perf_counter()
        # every process must call save_checkpoint (it synchronises them), so rank 0's clock decides for all
        if trainer.current_epoch == 0 or not trainer.strategy.broadcast(now - self.last_saved >= self.every_s):
            return
        temporary = self.path.with_suffix(".tmp")
        trainer.save_checkpoint(temporary)
        if trainer.is_global_zero:
            os.replace(temporary, self.path)
        self.last_saved = now


def resume_point(workdir: Path, stamp: str) -> tuple[Path, int] | None:
    """(state file, epoch it resumes at) when ``workdir`` holds this run's resume state; refuses a foreign one."""
    path = Path(workdir) / STATE_FILE
    if not path.exists():
        return None
    start_over = f"delete {path.parent} to start this run over"
    state = check_loadable(path, start_over)
    saved = state.get("callbacks", {}).get(ResumeState.__qualname__, {}) if isinstance(state, dict) else {}
    if saved.get("stamp") != stamp:
        raise CheckpointError(f"{path}: refused as resume state, it was not written by this run (stamp "
                              f"{saved.get('stamp')!r}, this run: {stamp!r}); {start_over}")
    return path, int(state["epoch"])


def set_log_aside(workdir: Path, epoch: int | None) -> None:
    """Lightning's CSV logger deletes ``metrics.csv`` when it starts: keep the rows of the epochs before the resume
    point ``epoch`` aside (those of earlier resumes included) for :func:`merge_log`; later rows are trained again.
    A run started from scratch (``epoch`` None) drops rows an earlier attempt set aside."""
    workdir = Path(workdir)
    aside, log = workdir / LOG_BEFORE, workdir / "metrics.csv"
    if epoch is None:
        aside.unlink(missing_ok=True)
        return
    kept = pd.read_csv(aside) if aside.exists() else pd.DataFrame({"epoch": []})
    first = int(kept["epoch"].max()) + 1 if len(kept) else 0  # the previous resume point
    if log.exists():
        current = pd.read_csv(log)
        kept = pd.concat([kept, current[(current["epoch"] >= first) & (current["epoch"] < epoch)]], ignore_index=True)
    kept.to_csv(aside, index=False)


def merge_log(workdir: Path) -> None:
    """Put the rows set aside before a resume back in front of the resumed attempt's, so every epoch is there once."""
    workdir = Path(workdir)
    aside, log = workdir / LOG_BEFORE, workdir / "metrics.csv"
    if aside.exists():
        parts = [pd.read_csv(aside)] + ([pd.read_csv(log)] if log.exists() else [])
        merged = pd.concat(parts, ignore_index=True)
        counters = [c for c in ("epoch", "step") if c in merged]  # integers, as Lightning writes them
        merged.astype(dict.fromkeys(counters, int)).to_csv(log, index=False)
        aside.unlink()
