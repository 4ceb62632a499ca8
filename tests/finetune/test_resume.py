"""A fine-tuning run killed mid-way resumes at the epoch it reached and stores exactly the uninterrupted numbers."""

import signal

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch

from medtransfer.config import HardwareConfig, TrainConfig
from medtransfer.data.imbalance import EpochDraw
from medtransfer.data.synthetic_seg import synthetic_seg2d
from medtransfer.errors import CheckpointError
from medtransfer.finetune import resume
from medtransfer.finetune.module import FineTuner
from medtransfer.finetune.policies import parse_policy
from medtransfer.finetune.strategies import parse_strategy
from medtransfer.finetune.train import fine_tune
from medtransfer.interrupts import Interrupted
from medtransfer.models.factory import create_backbone

pytestmark = pytest.mark.usefixtures("one_thread")
EPOCHS, KILL_AT = 4, 2
CPU = HardwareConfig(accelerator="cpu", resume_every_s=0)  # a state at every epoch's start


def kill_in_epoch(monkeypatch, epoch: int):
    """Interrupt training at the second batch of ``epoch``, as Ctrl-C would (``interrupts.Interrupted``), in any
    fine-tuning module (segmentation's too)."""
    def kill(self, batch, batch_idx):
        if self.current_epoch == epoch and batch_idx == 1:
            raise Interrupted(signal.SIGINT)
    monkeypatch.setattr(FineTuner, "on_train_batch_start", kill, raising=False)


def run(data, make_backbone, workdir, strategy="end_to_end", policy="none", epoch_draw=None, **train):
    cfg = TrainConfig(**{"epochs": EPOCHS, "batch_size": 16, "lr": 1e-2, "schedule": "cosine", "dropout": 0.3,
                         **train})
    backbone = make_backbone(seed=1)
    return fine_tune(data, np.arange(len(data.train)), backbone, parse_strategy(strategy), backbone.default_view, cfg,
                     CPU, seed=1, workdir=workdir, policy=parse_policy(policy), epoch_draw=epoch_draw)


def killed_then_resumed(data, make_backbone, monkeypatch, workdir, **kw):
    with monkeypatch.context() as patch:
        kill_in_epoch(patch, KILL_AT)
        with pytest.raises(Interrupted):
            run(data, make_backbone, workdir, **kw)
    assert (workdir / resume.STATE_FILE).exists()
    return run(data, make_backbone, workdir, **kw)


def assert_same_run(resumed, whole):
    assert resumed.resumed_from == [KILL_AT] and whole.resumed_from == []
    for name in ("metrics", "val_metrics", "per_class"):  # exactly equal, NaN where the uninterrupted run has NaN
        np.testing.assert_equal(getattr(resumed, name), getattr(whole, name))
    assert (resumed.best_epoch, resumed.epochs_run) == (whole.best_epoch, whole.epochs_run)
    for key, value in whole.predictions.items():
        np.testing.assert_array_equal(resumed.predictions[key], value, strict=True, err_msg=key)


@pytest.mark.parametrize("strategy, kw", [
    ("end_to_end", {"policy": {"augment": "light", "mixup": 0.4}}),  # global RNG: augmentation, mixup, dropout
    ("linear", {}),  # cached frozen features: only the head trains
    ({"name": "warmup", "frozen_epochs": 1}, {}),  # resumed after its unfreezing epoch: still unfrozen
    ("end_to_end", {"epoch_draw": EpochDraw(np.arange(40), (np.arange(40, 96),), (30,), seed=5)}),  # resample
])
def test_a_killed_run_resumes_where_it_stopped_and_stores_the_uninterrupted_numbers(
        tiny2d, make_backbone, monkeypatch, tmp_path, strategy, kw):
    whole = run(tiny2d, make_backbone, tmp_path / "whole", strategy, **kw)
    resumed = killed_then_resumed(tiny2d, make_backbone, monkeypatch, tmp_path / "resumed", strategy=strategy, **kw)
    assert_same_run(resumed, whole)
    log = pd.read_csv(tmp_path / "resumed" / "metrics.csv")
    for column in ("val/auc", "train/loss"):  # every epoch once, with the numbers of the uninterrupted run
        rows = log.dropna(subset=[column])
        assert rows["epoch"].tolist() == list(range(EPOCHS))
        expected = pd.read_csv(tmp_path / "whole" / "metrics.csv").dropna(subset=[column])
        assert rows[column].tolist() == expected[column].tolist()
    assert not (tmp_path / "resumed" / resume.STATE_FILE.parent).exists()
    assert not (tmp_path / "resumed" / resume.LOG_BEFORE).exists()


def test_a_killed_segmentation_run_resumes_with_the_same_patches_and_numbers(monkeypatch, tmp_path):
    """Segmentation trains on random patches, augmented with their masks: drawn from the restored states too."""
    data = synthetic_seg2d(size=32, n_train=8, n_val=2, n_test=2, seed=0)

    def encoder(seed):
        L.seed_everything(seed, verbose=False)
        return create_backbone("resnet_tiny", data.in_chans, (16, 16))

    kw = {"batch_size": 4, "augment": "light", "segmentation": {"patch_size": 16}}
    whole = run(data, encoder, tmp_path / "whole", **kw)
    resumed = killed_then_resumed(data, encoder, monkeypatch, tmp_path / "resumed", **kw)
    assert_same_run(resumed, whole)


def test_without_restoring_the_random_states_the_resumed_run_differs(tiny2d, make_backbone, monkeypatch, tmp_path):
    """The check above is sharp: Lightning's own state alone does not reproduce the data order and draws."""
    whole = run(tiny2d, make_backbone, tmp_path / "whole", policy={"augment": "light"})
    monkeypatch.setattr(resume, "set_rng_state", lambda state, generator: None)
    resumed = killed_then_resumed(tiny2d, make_backbone, monkeypatch, tmp_path / "resumed",
                                  policy={"augment": "light"})
    assert resumed.resumed_from == [KILL_AT]
    assert not np.array_equal(resumed.predictions["scores"], whole.predictions["scores"])


def test_a_run_killed_twice_keeps_every_epoch_and_adds_up_its_fit_time(tiny2d, make_backbone, monkeypatch, tmp_path):
    for epoch in (1, 3):
        with monkeypatch.context() as patch:
            kill_in_epoch(patch, epoch)
            with pytest.raises(Interrupted):
                run(tiny2d, make_backbone, tmp_path)
    saved_s = torch.load(tmp_path / resume.STATE_FILE, weights_only=True)["callbacks"]["ResumeState"]["fit_s"]
    result = run(tiny2d, make_backbone, tmp_path)
    assert result.resumed_from == [1, 3]
    assert result.timings["fit_s"] > saved_s > 0
    log = pd.read_csv(tmp_path / "metrics.csv").dropna(subset=["val/loss"])
    assert log["epoch"].tolist() == list(range(EPOCHS))


def test_a_planted_pickle_is_refused_unread_naming_the_file(tiny2d, make_backbone, tmp_path):
    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(tmp_path / 'pwned')!r}, 'w').write('x')",))

    path = tmp_path / resume.STATE_FILE
    path.parent.mkdir(parents=True)
    torch.save({"epoch": 1, "callbacks": {"ResumeState": Payload()}}, path)
    with pytest.raises(CheckpointError, match=f"{path}: refused as resume state.*pickles.*exec.*delete"):
        run(tiny2d, make_backbone, tmp_path)
    assert not (tmp_path / "pwned").exists() and path.exists()


def test_a_resume_state_of_another_run_is_refused(tiny2d, make_backbone, monkeypatch, tmp_path):
    with monkeypatch.context() as patch:
        kill_in_epoch(patch, 1)
        with pytest.raises(Interrupted):
            run(tiny2d, make_backbone, tmp_path, batch_size=8)
    with pytest.raises(CheckpointError, match="not written by this run"):
        run(tiny2d, make_backbone, tmp_path, min_samples_per_epoch=200)


def test_states_are_written_at_most_every_resume_every_s(tiny2d, make_backbone, monkeypatch, tmp_path):
    saved = []
    monkeypatch.setattr(resume.os, "replace", lambda src, dst: saved.append(dst))
    cfg = TrainConfig(epochs=EPOCHS, batch_size=16, schedule="none")
    for every_s, workdir in ((0, tmp_path / "every"), (3600, tmp_path / "hourly")):
        backbone = make_backbone()
        fine_tune(tiny2d, np.arange(len(tiny2d.train)), backbone, parse_strategy("end_to_end"), backbone.default_view,
                  cfg, CPU.model_copy(update={"resume_every_s": every_s}), 0, workdir)
    assert len(saved) == EPOCHS - 1  # epochs 1..3 of the first run, none of the second
