"""Fine-tuning on real MedMNIST files from ../shared/data (skipped with a message where they are absent)."""

from pathlib import Path

import lightning as L
import pytest

from medtransfer.config import HardwareConfig, TrainConfig
from medtransfer.data import label_fraction_indices, load_dataset
from medtransfer.finetune.strategies import parse_strategy
from medtransfer.finetune.train import fine_tune
from medtransfer.models.factory import create_backbone

REAL = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "medmnist").resolve()
pytestmark = pytest.mark.realdata


def real(name):
    if not (REAL / f"{name}.npz").exists():
        pytest.skip(f"{REAL / name}.npz is absent: real-data tests need ../shared/data beside the clone")
    return load_dataset(name, root=str(REAL))


def test_pneumoniamnist_short_schedule_reaches_auc_above_0_85(tmp_path):
    data = real("pneumoniamnist")
    L.seed_everything(0, verbose=False)
    backbone = create_backbone("resnet_tiny", 1, data.image_size, spatial_dims=2)
    cfg = TrainConfig(epochs=3, batch_size=128, lr=2e-3, schedule="cosine")
    indices = label_fraction_indices(data.train.labels, data.task, 1.0, 0)
    result = fine_tune(data, indices, backbone, parse_strategy("end_to_end"), "stage", cfg,
                       HardwareConfig(accelerator="cpu"), 0, tmp_path)
    assert result.metrics["auc"] > 0.85, result.metrics
    assert len(result.predictions["scores"]) == 624  # the test split is never shrunk


def test_adrenalmnist3d_fine_tunes_a_3d_resnet_with_10_percent_labels(tmp_path):
    data = real("adrenalmnist3d")
    L.seed_everything(0, verbose=False)
    backbone = create_backbone("resnet_tiny_3d", 1, data.image_size, small_stem=False, spatial_dims=3)
    cfg = TrainConfig(epochs=4, batch_size=32, lr=2e-3, schedule="cosine", min_samples_per_epoch=256)
    indices = label_fraction_indices(data.train.labels, data.task, 0.1, 0)
    result = fine_tune(data, indices, backbone, parse_strategy("end_to_end"), "stage", cfg,
                       HardwareConfig(accelerator="cpu"), 0, tmp_path)
    assert len(indices) == 119 and len(result.predictions["scores"]) == 298
    assert result.metrics["auc"] > 0.6, result.metrics
