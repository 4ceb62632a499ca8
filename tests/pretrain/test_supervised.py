"""Supervised continual pre-training: the loss is the task's (cross-entropy, or per-label BCE for multi-label), it
learns, labels reach it through ``pretrain``, and datasets without classification labels are refused up front."""

import numpy as np
import pytest
import torch

from medtransfer.config import PretrainConfig
from medtransfer.config_files import validate_config
from medtransfer.data import DATASETS
from medtransfer.data.base import ImageDataset, Split
from medtransfer.errors import ConfigError
from medtransfer.models.factory import create_backbone
from medtransfer.pretrain import METHODS
from medtransfer.pretrain.multi_ssl import SubMethod
from medtransfer.pretrain.run import pretrain
from medtransfer.pretrain.supervised import Supervised

KW = dict(views={})


def method(task, num_classes, size=16):
    backbone = create_backbone("resnet_tiny", 1, size)
    return Supervised(backbone, Supervised.Options(), task=task, num_classes=num_classes, **KW)


def test_multiclass_loss_is_cross_entropy_of_the_head_on_the_augmented_view():
    m = method("multiclass", 3)
    images, labels = torch.rand(8, 1, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    torch.manual_seed(0)
    loss = m.ssl_loss(images, labels)
    torch.manual_seed(0)  # the same random view again
    logits = m.head(m.backbone(m.normalise(m.views(images))))
    expected = -(logits.log_softmax(1)[torch.arange(8), labels]).mean()
    assert torch.allclose(loss, expected)


def test_multilabel_loss_is_mean_binary_cross_entropy():
    m = method("multilabel", 4)
    images, labels = torch.rand(6, 1, 16, 16), torch.randint(0, 2, (6, 4))
    torch.manual_seed(0)
    loss = m.ssl_loss(images, labels)
    torch.manual_seed(0)
    p = torch.sigmoid(m.head(m.backbone(m.normalise(m.views(images)))))
    expected = -(labels * p.log() + (1 - labels) * (1 - p).log()).mean()
    assert torch.allclose(loss, expected, atol=1e-6)


def test_supervised_learns_a_fixed_batch(fixed_batch_losses):
    m = method("multiclass", 3)
    images, labels = torch.rand(12, 1, 16, 16), torch.arange(12) % 3
    losses = fixed_batch_losses(_Bound(m, labels), images, steps=15, lr=3e-3)
    assert losses[-1] < 0.5 * losses[0]


class _Bound(torch.nn.Module):
    """The shared fixed-batch loop calls ``ssl_loss(images)``; this binds the labels."""

    def __init__(self, inner, labels):
        super().__init__()
        self.inner, self.labels = inner, labels

    def ssl_loss(self, images):
        return self.inner.ssl_loss(images, self.labels)


def test_unlabelled_data_is_refused_before_training(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)

    def unlabelled(**_):
        split = Split(rng.integers(0, 255, (8, 1, 16, 16), dtype=np.uint8), np.zeros(8, np.int64))
        return ImageDataset("unlabelled_toy", "unlabelled", ("image",), 2, split, split, split)

    monkeypatch.setitem(DATASETS, "unlabelled_toy", unlabelled)
    cfg = validate_config({"method": "supervised", "data": {"name": "unlabelled_toy"},
                           "backbone": {"name": "resnet_tiny"}, "epochs": 1, "batch_size": 4}, PretrainConfig)
    with pytest.raises(ConfigError, match="'supervised' trains on labels.*task 'unlabelled'"):
        pretrain(cfg, tmp_path)
    assert not (tmp_path / "lightning").exists()


def test_supervised_is_not_a_multi_ssl_part():
    assert METHODS["supervised"].needs_labels
    with pytest.raises(ValueError, match="unknown sub-method 'supervised'"):
        SubMethod(name="supervised")
