"""CheXpert-style uncertain labels reach the loss: ignored entries add nothing, smoothed ones are the targets."""

import numpy as np
import torch
import torch.nn.functional as F

from medtransfer.config import TrainConfig
from medtransfer.data.base import ImageDataset, Split
from medtransfer.data.csv_dataset import TargetSplit
from medtransfer.finetune.module import FineTuner
from medtransfer.finetune.strategies import parse_strategy
from medtransfer.finetune.train import fine_tune, tensor_dataset, training_targets
from medtransfer.models.factory import create_backbone


def _split(n=6, rng=np.random.default_rng(0)):
    images = rng.integers(0, 255, (n, 1, 16, 16), dtype=np.uint8)
    labels = np.tile(np.array([[1, 0], [0, 1]]), (n // 2, 1)).astype(np.int64)
    soft = labels.astype(np.float32)
    soft[0, 1] = 0.7  # an uncertain label smoothed towards 1
    mask = np.ones_like(labels, dtype=bool)
    mask[1, 0] = False  # an uncertain label ignored
    return TargetSplit(images, labels, soft_labels=soft, label_mask=mask)


def test_training_targets_combine_soft_labels_and_the_ignore_mask():
    split = _split()
    targets = training_targets(split)
    assert targets.dtype == np.float32 and targets[0, 1] == np.float32(0.7) and np.isnan(targets[1, 0])
    known = ~np.isnan(targets)
    assert known.sum() == targets.size - 1 and np.array_equal(targets[known], split.soft_labels[known])
    plain = Split(split.images, split.labels)
    assert training_targets(plain) is plain.labels
    _, _, evaluated = tensor_dataset(split)[0]
    assert evaluated.dtype == torch.int64  # evaluation scores the hard labels


def test_multilabel_loss_skips_ignored_entries_and_uses_soft_targets():
    module = FineTuner.__new__(FineTuner)
    module.task = "multilabel"
    logits = torch.tensor([[0.3, -1.2], [2.0, 0.5]], requires_grad=True)
    targets = torch.tensor([[1.0, 0.7], [float("nan"), 1.0]])
    loss = module.loss(logits, targets)
    expected = F.binary_cross_entropy_with_logits(torch.tensor([0.3, -1.2, 0.5]), torch.tensor([1.0, 0.7, 1.0]))
    assert torch.allclose(loss, expected)
    loss.backward()
    assert logits.grad[1, 0] == 0 and (logits.grad[0] != 0).all()


def test_fine_tuning_on_uncertain_multilabel_data_runs_and_scores_hard_labels(cpu, tmp_path):
    data = ImageDataset("chexpert_like", "multilabel", ("a", "b"), 2, _split(12), _split(6), _split(6)).validate()
    backbone = create_backbone("resnet_tiny", 1, (16, 16))
    result = fine_tune(data, np.arange(12), backbone, parse_strategy("end_to_end"), backbone.default_view,
                       TrainConfig(epochs=1, batch_size=4, schedule="none"), cpu, 0, tmp_path)
    assert np.isfinite(result.metrics["auc"])
    assert result.predictions["y_true"].dtype.kind == "i"
