"""SimCLR: the loss is NT-Xent as written in the paper, it learns, and its checkpoint is a valid init."""

import json

import lightning as L
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from medtransfer.config import PretrainConfig
from medtransfer.config_files import validate_config
from medtransfer.data.transforms import MedicalViews
from medtransfer.errors import ConfigError
from medtransfer.models.checkpoint import load_backbone_weights, read_metadata, read_weights
from medtransfer.models.factory import create_backbone
from medtransfer.pretrain import METHODS
from medtransfer.pretrain.run import pretrain
from medtransfer.pretrain.simclr import SimCLR, SimCLROptions

TINY = {"name": "synthetic2d", "n_train": 64, "n_val": 16, "n_test": 16, "size": 16}


def nt_xent_reference(z0, z1, temperature):
    """NT-Xent (Chen et al. 2020, eq. 1) written out: each view's positive is its pair, negatives all others."""
    z = F.normalize(torch.cat([z0, z1]), dim=1)
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    n = len(z0)
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, targets)


def make_simclr(temperature=0.3, spatial_dims=2):
    name, size = ("resnet_tiny", 16) if spatial_dims == 2 else ("resnet_tiny_3d", 16)
    backbone = create_backbone(name, 1, size, small_stem=spatial_dims == 3)
    return SimCLR(backbone, SimCLROptions(temperature=temperature), views={})


def test_loss_equals_reference_nt_xent_on_fixed_embeddings():
    torch.manual_seed(0)
    z0, z1 = torch.randn(8, 16), torch.randn(8, 16)
    method = make_simclr(temperature=0.3)
    assert torch.allclose(method.criterion(z0, z1), nt_xent_reference(z0, z1, 0.3), atol=1e-6)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_loss_goes_down_over_a_few_steps(spatial_dims, fixed_batch_losses):
    L.seed_everything(0, verbose=False)
    method = make_simclr(spatial_dims=spatial_dims)
    images = torch.rand(16, 1, *(16,) * spatial_dims)
    losses = fixed_batch_losses(method, images, steps=12)
    assert losses[-1] < losses[0] and sum(losses[-3:]) < sum(losses[:3])


def test_views_respect_medical_images():
    grey = MedicalViews(2, 1, (16, 16))
    rgb = MedicalViews(2, 3, (16, 16))
    assert not any("ColorJiggle" in type(op).__name__ for op in grey.ops)
    assert any("ColorJiggle" in type(op).__name__ for op in rgb.ops)
    assert not any("VerticalFlip" in type(op).__name__ for op in grey.ops)
    torch.manual_seed(0)
    x = torch.rand(4, 1, 12, 12, 12)
    v1, v2 = MedicalViews(3, 1, (12, 12, 12))(x), MedicalViews(3, 1, (12, 12, 12))(x)
    assert v1.shape == x.shape and 0 <= v1.min() and v1.max() <= 1 and not torch.equal(v1, v2)


def test_pretrain_writes_a_reusable_checkpoint_that_fits_the_backbone(tmp_path):
    cfg = validate_config({"method": "simclr", "data": TINY, "backbone": {"name": "resnet_tiny"}, "epochs": 2,
                           "batch_size": 32}, PretrainConfig)
    path = pretrain(cfg, tmp_path)
    meta = read_metadata(path)
    assert meta["method"] == "simclr" and meta["dataset"] == "synthetic2d" and meta["epochs"] == 2
    assert meta["backbone"] == {"name": "resnet_tiny", "spatial_dims": 2, "in_chans": 1, "input_size": [16, 16],
                                "small_stem": False}
    assert len(pd.read_csv(tmp_path / "metrics.csv").dropna(subset=["pretrain/loss"])) == 2
    fresh = create_backbone("resnet_tiny", 1, 16)
    load_backbone_weights(fresh, read_weights(path), str(path))
    assert torch.equal(fresh.model.conv1.weight, read_weights(path)["conv1.weight"])
    stamp = path.stat().st_mtime_ns
    assert pretrain(cfg, tmp_path) == path and path.stat().st_mtime_ns == stamp  # same config: reused


def test_continual_pretraining_records_the_chain_of_inits(tmp_path):
    first = pretrain(validate_config({"method": "simclr", "data": TINY, "backbone": {"name": "resnet_tiny"},
                                      "epochs": 1, "batch_size": 32}, PretrainConfig), tmp_path / "a")
    second_cfg = validate_config({"method": "simclr", "data": {**TINY, "seed": 5}, "backbone": {"name": "resnet_tiny"},
                                  "epochs": 1, "batch_size": 32, "init": str(first)}, PretrainConfig)
    second = pretrain(second_cfg, tmp_path / "b")
    chain = json.loads(second.with_suffix(".json").read_text())["init_chain"]
    assert chain[0]["checkpoint"] == str(first) and chain[0]["method"] == "simclr"


def test_unknown_method_options_fail_before_training(tmp_path):
    cfg = validate_config({"method": "simclr", "data": TINY, "method_options": {"temprature": 0.1}}, PretrainConfig)
    with pytest.raises(ConfigError, match="temprature.*temperature"):
        pretrain(cfg, tmp_path)
    cfg = validate_config({"method": "simclr", "data": TINY, "views": {"colour": 1}}, PretrainConfig)
    with pytest.raises(ConfigError, match="colour"):
        pretrain(cfg, tmp_path)
    assert not any(tmp_path.iterdir())


def test_registry_lists_simclr():
    assert METHODS["simclr"] is SimCLR
