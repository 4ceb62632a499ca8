"""Segmentation fine-tuning: strategies act on the encoder exactly as on a classifier, the decoder always trains,
the loss and metrics respect the field of view, and whole images are predicted by sliding window."""

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch

import medtransfer.finetune.train as train_module
from medtransfer.config import TrainConfig
from medtransfer.data.normalisation import IMAGENET
from medtransfer.data.synthetic_seg import synthetic_seg2d
from medtransfer.data.transforms import SegmentationPreprocess
from medtransfer.errors import ConfigError
from medtransfer.evaluate.segmentation import per_image_scores, summarize
from medtransfer.finetune.segmentation import SegmentationLoss, build_segmentation
from medtransfer.finetune.strategies import parse_strategy
from medtransfer.finetune.train import fine_tune, resolve_monitor
from medtransfer.models.factory import create_backbone
from medtransfer.models.segmentation import SegmentationModel

STAGES = {0: ["conv1", "bn1", "layer1"], 1: ["layer2"], 2: ["layer3"], 3: ["layer4"]}


@pytest.fixture(scope="module")
def seg2d():
    return synthetic_seg2d(size=32, n_train=8, n_val=2, n_test=2, seed=0)


def short(**kw):
    return TrainConfig(**{"epochs": 1, "batch_size": 4, "lr": 1e-2, "schedule": "none",
                          "segmentation": {"patch_size": 16}, **kw})


def backbone(data, patch=16, seed=0):
    L.seed_everything(seed, verbose=False)
    return create_backbone("resnet_tiny", data.in_chans, (patch,) * data.spatial_dims)


@pytest.fixture
def spy(monkeypatch):
    """Records the model fine_tune builds and its decoder's initial weights."""
    seen = {}

    def build(*args, **kwargs):
        model, module = build_segmentation(*args, **kwargs)
        seen["model"], seen["head"] = model, {k: v.clone() for k, v in model.head.state_dict().items()}
        return model, module
    monkeypatch.setattr(train_module, "build_segmentation", build)
    return seen


@pytest.mark.parametrize("strategy, trained_units", [("linear", []), ("q2", [1])])
def test_frozen_encoder_units_are_bit_identical_while_the_decoder_trains(seg2d, cpu, tmp_path, spy, strategy,
                                                                         trained_units):
    encoder = backbone(seg2d)
    before = {k: v.clone() for k, v in encoder.model.state_dict().items()}
    result = fine_tune(seg2d, np.arange(8), encoder, parse_strategy(strategy), "stage", short(), cpu, 0, tmp_path)
    after = encoder.model.state_dict()
    for unit, prefixes in STAGES.items():
        for prefix in prefixes:
            keys = [k for k in before if k.startswith(prefix + ".")]
            moved = any(not torch.equal(before[k], after[k]) for k in keys)  # weights and BatchNorm buffers
            assert moved == (unit in trained_units), (strategy, prefix)
    head = spy["model"].head.state_dict()
    assert any(not torch.equal(spy["head"][k], head[k]) for k in head)
    decoder_params = sum(p.numel() for p in spy["model"].head.parameters())
    trained_encoder = sum(p.numel() for n, p in encoder.model.named_parameters() if n.startswith("layer2."))
    assert result.trainable_params == decoder_params + (trained_encoder if trained_units else 0)


@pytest.mark.parametrize("spec", ["warmup", "lwlr_decay"])
def test_strategies_with_their_own_learning_rates_give_the_decoder_the_head_rate(spec):
    model = SegmentationModel(create_backbone("resnet_tiny", 1, 32), 3)
    groups = parse_strategy(spec).param_groups(model, 0.1, "stage")
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())  # every parameter exactly once
    head = {id(p) for p in model.head.parameters()}
    assert [g["lr"] for g in groups if {id(p) for p in g["params"]} == head] == [0.1]


@pytest.mark.parametrize("kind, classes", [("dice", 3), ("dice_ce", 3), ("bce", 2)])
def test_loss_ignores_everything_outside_the_field_of_view(kind, classes):
    torch.manual_seed(0)
    loss = SegmentationLoss(kind, classes)
    masks = torch.randint(0, classes, (2, 12, 12))
    fov = torch.zeros(2, 12, 12, dtype=torch.bool)
    fov[:, 2:10, 2:10] = True
    logits = torch.randn(2, loss.num_outputs, 12, 12)
    noisy = logits.clone()
    noisy[..., :2, :] = 100 * torch.randn_like(noisy[..., :2, :])  # garbage outside the FOV
    other = masks.clone()
    other[..., :2, :] = 0
    assert torch.allclose(loss(logits, masks, fov), loss(noisy, other, fov))
    assert not torch.allclose(loss(logits, masks, fov), loss(noisy, other, torch.ones_like(fov)))


def test_bce_needs_a_binary_dataset():
    with pytest.raises(ConfigError, match="'bce' needs background \\+ one class"):
        SegmentationLoss("bce", 3)


def test_patches_and_augmentation_move_image_mask_and_fov_together():
    torch.manual_seed(0)
    masks = torch.randint(0, 3, (4, 40, 36))
    fov = torch.rand(4, 40, 36) > 0.3
    images = (masks * 100 + fov * 10).to(torch.uint8).unsqueeze(1)  # the image encodes mask and FOV
    prep = SegmentationPreprocess(2, 3, patch_size=(16, 12), augment="flip")
    x, m, f = prep(images, masks, fov, train=True)
    pixels = torch.round((x[:, 0] * 0.5 + 0.5) * 255)
    assert x.shape == (4, 1, 16, 12) and m.shape == f.shape == (4, 16, 12)
    assert torch.equal(pixels, (m * 100 + f * 10).float())
    x, m, f = prep(images, masks, fov, train=False)  # evaluation: whole images, untouched masks
    assert x.shape == (4, 1, 40, 36) and torch.equal(m, masks) and torch.equal(f, fov)


def test_whole_images_larger_than_the_patch_are_predicted_at_full_size(cpu, tmp_path):
    data = synthetic_seg2d(size=40, n_train=4, n_val=1, n_test=2, seed=2)
    result = fine_tune(data, np.arange(4), backbone(data), parse_strategy("end_to_end"), "stage", short(), cpu, 0,
                       tmp_path)
    assert result.predictions["y_pred"].shape == (2, 40, 40)  # patch 16, image 40: sliding window, not resizing
    assert result.predictions["dice"].shape == (2, 3) and np.array_equal(result.predictions["index"], [0, 1])
    # the stored per-image Dice is the Dice of the stored prediction
    recomputed = per_image_scores(torch.from_numpy(result.predictions["y_pred"]), torch.from_numpy(data.test.labels),
                                  3, torch.from_numpy(data.test.fov), ("dice",))["dice"].numpy()
    assert np.allclose(recomputed, result.predictions["dice"])
    assert result.metrics.keys() == {"dice", "iou", "hd95"} and len(result.per_class["dice"]) == 3


def test_2d_segmentation_learns_within_seconds(cpu, tmp_path):
    data = synthetic_seg2d(size=48, n_train=24, n_val=4, n_test=6, seed=0)
    encoder = backbone(data, patch=32)
    untrained = SegmentationModel(backbone(data, patch=32), 3).eval()
    with torch.no_grad():
        x = (torch.from_numpy(data.test.images).float() / 255 - 0.5) / 0.5
        pred = untrained(x).argmax(1)
    chance, _ = summarize({k: v.numpy() for k, v in per_image_scores(
        pred, torch.from_numpy(data.test.labels), 3, torch.from_numpy(data.test.fov), ("dice",)).items()})
    cfg = TrainConfig(epochs=10, batch_size=16, lr=3e-3, schedule="cosine", min_samples_per_epoch=128, augment="flip",
                      segmentation={"patch_size": 32})
    result = fine_tune(data, np.arange(24), encoder, parse_strategy("end_to_end"), "stage", cfg, cpu, 0, tmp_path)
    assert chance["dice"] < 0.2
    assert result.metrics["dice"] > 0.55, result.metrics  # 0.68-0.73 over seeds 0-2


def test_monitor_defaults_to_dice_and_must_suit_the_task(seg2d, cpu, tmp_path):
    assert resolve_monitor(TrainConfig(), "segmentation") == "dice"
    assert resolve_monitor(TrainConfig(), "multiclass") == "auc"
    with pytest.raises(ConfigError, match="'auc' is not a metric of segmentation"):
        resolve_monitor(TrainConfig(monitor="auc"), "segmentation")
    with pytest.raises(ConfigError, match="'dice' is not a metric of binary"):
        resolve_monitor(TrainConfig(monitor="dice"), "binary")
    # hd95 is a distance: the selected epoch is the one with the lowest validation value
    result = fine_tune(seg2d, np.arange(8), backbone(seg2d), parse_strategy("end_to_end"), "stage",
                       short(epochs=3, monitor="hd95"), cpu, 0, tmp_path)
    log = pd.read_csv(tmp_path / "metrics.csv").dropna(subset=["val/hd95"])
    assert result.best_epoch == int(log.loc[log["val/hd95"].idxmin(), "epoch"])


def test_encoder_receives_inputs_normalised_with_the_init_statistics(cpu, tmp_path):
    """Training patches and sliding windows alike: uint8 / 255 normalised per channel with the init's mean/std."""
    data = synthetic_seg2d(size=32, n_train=8, n_val=2, n_test=2, seed=0, channels=3)
    encoder, seen = backbone(data), []
    encoder.model.conv1.register_forward_pre_hook(  # the decoder runs feature_maps, not forward: watch the stem
        lambda module, inputs: seen.append(inputs[0].detach().clone()))
    fine_tune(data, np.arange(8), encoder, parse_strategy("end_to_end"), "stage", short(), cpu, 0, tmp_path,
              normalisation=IMAGENET)
    seen = [x for x in seen if x.any()]  # not the decoder's all-zero probe of the encoder's channels
    mean, std = IMAGENET.shaped(2)
    pixels = torch.cat([x.transpose(0, 1).flatten(1) for x in seen], dim=1) * std.view(3, 1) + mean.view(3, 1)
    assert seen and pixels.min() > -1e-4 and pixels.max() < 1 + 1e-4
    torch.testing.assert_close(pixels * 255, (pixels * 255).round(), rtol=0, atol=1e-3)
