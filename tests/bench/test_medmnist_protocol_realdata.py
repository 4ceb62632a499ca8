"""The MedMNIST v2 protocol's pieces, pinned on real files from ../shared/data (skipped where they are absent).

A short schedule (4 epochs, so the lr steps after epochs 2 and 3 of 4) with a tiny backbone: the loop is the
protocol's, only the network is small enough for CI.
"""

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medtransfer.bench.medmnist_protocol import comparison, protocol_config
from medtransfer.bench.runner import run_experiment
from medtransfer.bench.store import ResultStore
from medtransfer.finetune.module import FineTuner

REAL = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "medmnist").resolve()
pytestmark = pytest.mark.realdata


@pytest.fixture
def spy(monkeypatch):
    """Records, from inside the real loop: the sample indices and lr of every training batch, the weights after
    every epoch (when validation runs), and the weights and calls of the test."""
    seen = {"train": [], "weights": [], "test_weights": [], "test_ends": 0}
    step, val_end, test_step, test_end = (FineTuner.training_step, FineTuner.on_validation_epoch_end,
                                          FineTuner.test_step, FineTuner.on_test_epoch_end)

    def training_step(self, batch, batch_idx):
        lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        seen["train"].append((self.current_epoch, batch[0].clone(), lr))
        return step(self, batch, batch_idx)

    def on_validation_epoch_end(self):
        seen["weights"].append(copy.deepcopy(self.model.state_dict()))
        return val_end(self)

    def on_test_step(self, batch, batch_idx):
        if batch_idx == 0:
            seen["test_weights"].append(copy.deepcopy(self.model.state_dict()))
        return test_step(self, batch, batch_idx)

    def on_test_epoch_end(self):
        seen["test_ends"] += 1
        return test_end(self)

    for name, fn in [("training_step", training_step), ("on_validation_epoch_end", on_validation_epoch_end),
                     ("test_step", on_test_step), ("on_test_epoch_end", on_test_epoch_end)]:
        monkeypatch.setattr(FineTuner, name, fn)
    return seen


def _need(name: str) -> None:
    if not (REAL / f"{name}.npz").exists():
        pytest.skip(f"{REAL / name}.npz is absent: real-data tests need ../shared/data beside the clone")


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_pneumoniamnist_protocol_keeps_every_image_steps_the_lr_selects_on_val_auc_and_tests_once(tmp_path, spy):
    _need("pneumoniamnist")
    cfg = protocol_config(["pneumoniamnist"], REAL, seeds=[0], epochs=4, device="cpu", backbone="resnet_tiny")
    summary = run_experiment(cfg, tmp_path, progress=False)
    assert summary.done == 1 and not summary.failed
    for epoch in range(4):  # all 4708 training images, each once; the last batch holds the 100 left over
        batches = [(idx, lr) for e, idx, lr in spy["train"] if e == epoch]
        indices = torch.cat([idx for idx, _ in batches])
        assert len(indices) == 4708 and torch.equal(indices.sort().values, torch.arange(4708))
        assert len(batches[-1][0]) == 4708 % 128
        lrs = [lr for _, lr in batches]  # x0.1 after 50 % (2 epochs) and 75 % (3 epochs) of the 4
        assert min(lrs) == max(lrs) == pytest.approx([1e-3, 1e-3, 1e-4, 1e-5][epoch])
    (log,) = tmp_path.glob("runs/*/metrics.csv")
    val_auc = pd.read_csv(log).dropna(subset=["val/auc"]).set_index("epoch")["val/auc"]
    assert list(val_auc.index) == [0, 1, 2, 3]
    best = int(np.argmax(val_auc.to_numpy()))  # first of equal maxima, as the reference's strict ">"
    assert spy["test_ends"] == 1 and len(spy["test_weights"]) == 1  # the test split is scored once ...
    assert _same(spy["test_weights"][0], spy["weights"][best])  # ... on the weights of the best validation AUC
    row = ResultStore(tmp_path).rows().iloc[0]
    assert row["extra"]["best_epoch"] == best and row["extra"]["n_train"] == 4708
    table = comparison(ResultStore(tmp_path).rows())
    assert table.loc[0, "n"] == 1 and 0.5 < table.loc[0, "auc_mean"] <= 1


def _adrenal_or_synthetic(tmp_path) -> tuple[Path, bool]:
    """The real AdrenalMNIST3D file, or a small random one in its layout (labels from the mean intensity)."""
    if (REAL / "adrenalmnist3d.npz").exists():
        return REAL, True
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 70), ("val", 20), ("test", 20)):
        images = rng.integers(0, 256, (n, 28, 28, 28), dtype=np.uint8)
        arrays[f"{split}_images"] = images
        arrays[f"{split}_labels"] = (images.mean(axis=(1, 2, 3)) > 127.5).astype(np.uint8)[:, None]
    np.savez(tmp_path / "adrenalmnist3d.npz", **arrays)
    return tmp_path, False


def test_3d_protocol_trains_a_3d_resnet_on_every_labelled_volume_in_batches_of_32(tmp_path, spy):
    (tmp_path / "data").mkdir()
    root, real = _adrenal_or_synthetic(tmp_path / "data")
    cfg = protocol_config(["adrenalmnist3d"], root, seeds=[0], epochs=1, device="cpu", backbone="resnet_tiny_3d")
    cfg = cfg.model_copy(update={"label_fractions": [0.1]})  # 119 of the 1188 volumes keep the test short
    if not real:
        cfg.datasets[0].options["verify"] = False  # the stand-in has no official MD5
    summary = run_experiment(cfg, tmp_path / "run", progress=False)
    assert summary.done == 1 and not summary.failed
    row = ResultStore(tmp_path / "run").rows().iloc[0]
    n = row["extra"]["n_train"]
    assert n == 119 or not real
    sizes = [len(idx) for _, idx, _ in spy["train"]]
    assert sum(sizes) == n and sizes[:-1] == [32] * (len(sizes) - 1) and sizes[-1] == n % 32
    assert spy["test_ends"] == 1 and row["config"]["backbone"]["small_stem"]
    assert 0 <= row["metrics"]["auc"] <= 1
