"""Every training sample once per epoch (the MedMNIST v2 reference loop keeps the partial last batch)."""

import numpy as np
import pytest
import torch
from torch.utils.data import RandomSampler

from medtransfer.finetune.batches import EveryBatch, drops_with_full_batches
from medtransfer.finetune.module import FineTuner
from medtransfer.finetune.strategies import parse_strategy
from medtransfer.finetune.train import fine_tune


@pytest.mark.parametrize("n, batch, sizes", [
    (4708, 128, [128] * 36 + [100]),  # PneumoniaMNIST's training split: the last 100 images used to be dropped
    (1188, 32, [32] * 37 + [4]),      # AdrenalMNIST3D's
    (129, 128, [129]),                # a lone trailing image joins the batch before it: BatchNorm needs >1 value
    (1, 128, [1]),
    (256, 128, [128, 128]),
])
def test_every_sample_once_per_epoch_in_batches_of_the_set_size(n, batch, sizes):
    batches = list(EveryBatch(RandomSampler(range(n), generator=torch.Generator().manual_seed(0)), batch, False))
    assert [len(b) for b in batches] == sizes and len(EveryBatch(range(n), batch, False)) == len(sizes)
    assert sorted(i for b in batches for i in b) == list(range(n))


def test_only_partial_epochs_of_several_batches_were_dropped_before():
    assert drops_with_full_batches(4708, 128) and drops_with_full_batches(129, 128)
    assert not drops_with_full_batches(256, 128) and not drops_with_full_batches(100, 128)


def test_fine_tuning_sees_every_training_image_each_epoch(tiny2d, make_backbone, fast_train, cpu, tmp_path,
                                                          monkeypatch):
    """96 images in batches of 16 + 4 extra per epoch via min_samples_per_epoch=100: 7 batches, the last of 4."""
    seen, step = [], FineTuner.training_step

    def spy(self, batch, batch_idx):
        seen.append((self.current_epoch, batch[0].clone()))
        return step(self, batch, batch_idx)

    monkeypatch.setattr(FineTuner, "training_step", spy)
    train = fast_train.model_copy(update={"min_samples_per_epoch": 100})
    fine_tune(tiny2d, np.arange(96), make_backbone(), parse_strategy("end_to_end"), "stage", train, cpu, 0, tmp_path)
    for epoch in range(train.epochs):
        idx = torch.cat([i for e, i in seen if e == epoch])
        assert len(idx) == 100 and set(idx.tolist()) == set(range(96))


def test_nearest_resize_replicates_pixels_as_the_medmnist_224_rows_were_made():
    """28 -> 224 with nearest is each pixel repeated 8x8 (PIL NEAREST); linear blends neighbours."""
    from medtransfer.data.transforms import Preprocess

    x = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    near = Preprocess(2, size=(224, 224), resize_mode="nearest")(x)
    expected = ((x.float() / 255 - 0.5) / 0.5).repeat_interleave(8, 2).repeat_interleave(8, 3)
    assert torch.allclose(near, expected)
    assert not torch.allclose(Preprocess(2, size=(224, 224))(x), expected)
