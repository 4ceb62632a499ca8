"""Fine-tuning strategies on MONAI's 3D encoders, through ``fine_tune`` on synthetic volumes: frozen units are
bit-identical (weights and norm buffers), trained ones move, k-NN and truncation work, and segmentation trains with
each encoder's own MONAI decoder."""

import lightning as L
import numpy as np
import pytest
import torch

from medtransfer.config import TrainConfig
from medtransfer.data.synthetic import synthetic3d
from medtransfer.data.synthetic_seg import synthetic_seg3d
from medtransfer.finetune.strategies import parse_strategy
from medtransfer.finetune.train import fine_tune
from medtransfer.models.backbones import owns
from medtransfer.models.factory import create_backbone

FAST = dict(epochs=1, batch_size=8, lr=1e-2, schedule="none")


@pytest.fixture(scope="module")
def volumes():
    return synthetic3d(size=32, n_train=16, n_val=8, n_test=8, seed=1)


def moved_units(backbone, before):
    """Indices of the stage units any of whose tensors (parameters or buffers) changed."""
    after = backbone.model.state_dict()
    return [i for i, prefixes in enumerate(backbone.unit_prefixes("stage"))
            if any(not torch.equal(before[k], after[k]) for k in after if any(owns(p, k) for p in prefixes))]


@pytest.mark.parametrize("name", ["swin_unetr_tiny", "segresnet_tiny"])
@pytest.mark.parametrize("strategy, trained", [("linear", []), ("q2", [1]), ("knn", []),
                                               ({"name": "truncate", "keep": "0-0.5", "train": "q2"}, [1])])
def test_strategies_freeze_and_train_exactly_their_units(volumes, cpu, tmp_path, name, strategy, trained):
    L.seed_everything(0, verbose=False)
    backbone = create_backbone(name, 1, volumes.image_size)
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    result = fine_tune(volumes, np.arange(16), backbone, parse_strategy(strategy), "stage", TrainConfig(**FAST),
                       cpu, 0, tmp_path)
    assert moved_units(backbone, before) == trained
    assert 0 <= result.metrics["auc"] <= 1 and result.predictions["scores"].shape == (8, volumes.num_classes)
    if isinstance(strategy, dict):  # truncated after the 2nd unit: the 3rd and 4th are gone
        assert len(backbone.view("stage")) == 2


@pytest.mark.parametrize("name, decoder, size, patch", [("swin_unetr_tiny", "swin_unetr", 64, [64, 64, 32]),
                                                        ("segresnet_tiny", "segresnet", 32, 16)])
def test_segmentation_fine_tunes_with_the_encoders_own_decoder(cpu, tmp_path, name, decoder, size, patch):
    data = synthetic_seg3d(size=size, n_train=4, n_val=1, n_test=1, seed=0)
    L.seed_everything(0, verbose=False)
    backbone = create_backbone(name, 1, tuple(patch) if isinstance(patch, list) else (patch,) * 3)
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    cfg = TrainConfig(**{**FAST, "batch_size": 2, "segmentation": {"decoder": decoder, "patch_size": patch}})
    result = fine_tune(data, np.arange(4), backbone, parse_strategy("q4"), "stage", cfg, cpu, 0, tmp_path)
    assert moved_units(backbone, before) == [3]
    assert 0 <= result.metrics["dice"] <= 1
