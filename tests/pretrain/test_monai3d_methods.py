"""Which SSL methods serve MONAI's 3D encoders: joint-embedding and predictive methods on their pooled features and
Models Genesis / denoising on their stage maps, for both; SparK on SegResNet (a CNN) but refused on Swin UNETR, by
name and before training."""

import pytest
import torch

from medtransfer.config import PretrainConfig
from medtransfer.config_files import validate_config
from medtransfer.errors import ConfigError
from medtransfer.models.checkpoint import load_backbone_weights, read_weights
from medtransfer.models.factory import create_backbone
from medtransfer.pretrain import METHODS
from medtransfer.pretrain.run import pretrain

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

NOT_SERVED = {"swin_unetr_tiny": {"mae", "spark"}, "segresnet_tiny": {"mae"}}  # MAE: 2D ViTs
DATA = {"name": "synthetic3d", "n_train": 8, "n_val": 4, "n_test": 4, "size": 32}


@pytest.mark.parametrize("name", sorted(NOT_SERVED))
def test_every_method_but_the_refused_ones_trains_the_encoder(name):
    backbone = create_backbone(name, 1, 32)
    served = {m for m, cls in METHODS.items() if cls.unsupported(backbone) is None}
    assert served == set(METHODS) - NOT_SERVED[name]
    for method in sorted(served - {"supervised"}):  # supervised: labels, covered with the other backbones
        torch.manual_seed(0)
        model = METHODS[method](create_backbone(name, 1, 32), METHODS[method].Options(), views={})
        loss = model.ssl_loss(torch.rand(2, 1, 32, 32, 32))
        loss.backward()
        assert torch.isfinite(loss), method
        assert all(p.grad is not None for p in model.backbone.parameters()), method  # every unit learns


def test_spark_on_swin_unetr_is_refused_by_name_before_training(tmp_path):
    swin = create_backbone("swin_unetr_tiny", 1, 32)
    assert METHODS["spark"].unsupported(swin) == "needs a resnet or cnn or segresnet backbone, not swin_unetr_tiny " \
                                                  "(swin_unetr)"
    cfg = validate_config({"method": "spark", "data": DATA, "backbone": {"name": "swin_unetr_tiny"}, "epochs": 1,
                           "batch_size": 4}, PretrainConfig)
    with pytest.raises(ConfigError, match=r"method: 'spark' needs a resnet or cnn or segresnet backbone.*allowed methods "
                                          r"for this backbone: .*models_genesis.*simclr"):
        pretrain(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_pretraining_swin_unetr_writes_weights_a_fresh_backbone_loads(tmp_path):
    cfg = validate_config({"method": "simclr", "data": DATA, "backbone": {"name": "swin_unetr_tiny"}, "epochs": 1,
                           "batch_size": 4}, PretrainConfig)
    path = pretrain(cfg, tmp_path / "out")
    fresh = create_backbone("swin_unetr_tiny", 1, 32)
    before = {k: v.clone() for k, v in fresh.model.state_dict().items()}
    load_backbone_weights(fresh, read_weights(path), str(path))
    after = fresh.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in after if k.endswith("qkv.weight"))
