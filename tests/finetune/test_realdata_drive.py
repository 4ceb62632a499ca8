"""Retinal vessel segmentation on the real DRIVE images from ../shared/data (skipped with a message where absent)."""

from pathlib import Path

import lightning as L
import numpy as np
import pytest

from medtransfer.config import HardwareConfig, TrainConfig
from medtransfer.data import load_dataset
from medtransfer.finetune.strategies import parse_strategy
from medtransfer.finetune.train import fine_tune
from medtransfer.models.factory import create_backbone

DRIVE = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "DRIVE").resolve()
pytestmark = pytest.mark.realdata


def test_a_small_unet_trained_briefly_on_patches_reaches_dice_above_0_6_inside_the_fov(tmp_path):
    if not (DRIVE / "training").is_dir():
        pytest.skip(f"{DRIVE} is absent: real-data tests need ../shared/data beside the clone")
    data = load_dataset("drive", root=str(DRIVE))
    L.seed_everything(0, verbose=False)
    encoder = create_backbone("resnet_tiny", data.in_chans, (96, 96), spatial_dims=2)
    # the study's DRIVE loss (BCE); 10 epochs x 256 random 96 px patches = 320 steps of 8, about 1.5 min on one core
    cfg = TrainConfig(epochs=10, batch_size=8, lr=3e-3, schedule="cosine", min_samples_per_epoch=256, augment="flip",
                      segmentation={"patch_size": 96, "loss": "bce"})
    result = fine_tune(data, np.arange(len(data.train)), encoder, parse_strategy("end_to_end"), "stage", cfg,
                       HardwareConfig(accelerator="cpu"), 0, tmp_path)
    assert result.predictions["y_pred"].shape == (20, 584, 565)  # the 20 official test images, native size
    assert result.metrics["dice"] > 0.6, result.metrics  # measured 0.674
