"""fine_tune: reproducible, selects on validation only, tests once on the selected weights, any task and 2D/3D."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from medtransfer.config import TrainConfig
from medtransfer.data.base import Split
from medtransfer.data.synthetic import synthetic3d
from medtransfer.finetune.strategies import parse_strategy
from medtransfer.finetune.train import fine_tune, tensor_dataset
from medtransfer.models.factory import create_backbone
from medtransfer.models.heads import Classifier
from medtransfer.data.transforms import Preprocess


def run(data, backbone, cfg, cpu, tmp_path, seed=0, indices=None, strategy="end_to_end"):
    indices = np.arange(len(data.train)) if indices is None else indices
    return fine_tune(data, indices, backbone, parse_strategy(strategy), backbone.default_view, cfg, cpu, seed, tmp_path)


def test_same_seed_gives_identical_predictions_and_another_seed_differs(tiny2d, make_backbone, fast_train, cpu,
                                                                        tmp_path):
    aug = fast_train.model_copy(update={"augment": "light"})  # augmentation must be seeded too
    a = run(tiny2d, make_backbone(seed=1), aug, cpu, tmp_path / "a", seed=1)
    b = run(tiny2d, make_backbone(seed=1), aug, cpu, tmp_path / "b", seed=1)
    c = run(tiny2d, make_backbone(seed=2), aug, cpu, tmp_path / "c", seed=2)
    assert np.array_equal(a.predictions["scores"], b.predictions["scores"])
    assert a.metrics == b.metrics
    assert not np.array_equal(a.predictions["scores"], c.predictions["scores"])


def test_test_split_is_scored_once_with_the_best_validation_checkpoint(tiny2d, make_backbone, cpu, tmp_path):
    cfg = TrainConfig(epochs=4, batch_size=16, lr=5e-2, schedule="none", keep_checkpoints=True)
    result = run(tiny2d, make_backbone(), cfg, cpu, tmp_path)
    log = pd.read_csv(tmp_path / "metrics.csv").dropna(subset=["val/auc"])
    assert result.best_epoch == int(log.loc[log["val/auc"].idxmax(), "epoch"])
    assert result.val_metrics.keys() >= {"auc", "acc", "loss"}
    # recompute the test predictions from the kept best checkpoint: they must be what was stored
    state = torch.load(tmp_path / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    model = Classifier(create_backbone("resnet_tiny", 1, tiny2d.image_size), tiny2d.num_classes)
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    x = Preprocess(2)(tensor_dataset(tiny2d.test).tensors[1])
    probs = torch.softmax(model.eval()(x), 1).detach().numpy()
    assert np.allclose(probs, result.predictions["scores"], atol=1e-5)
    assert np.array_equal(result.predictions["index"], np.arange(len(tiny2d.test)))
    assert np.array_equal(result.predictions["y_true"], tiny2d.test.labels)


def test_stored_val_metrics_are_the_selected_epochs_not_the_last(tiny2d, make_backbone, cpu, tmp_path):
    cfg = TrainConfig(epochs=5, batch_size=16, lr=5e-1, schedule="none")  # high lr: val AUC jumps around
    result = run(tiny2d, make_backbone(), cfg, cpu, tmp_path)
    log = pd.read_csv(tmp_path / "metrics.csv").dropna(subset=["val/loss"]).set_index("epoch")
    assert result.best_epoch != log.index.max()  # the case that matters: the last epoch was not selected
    selected = {c.removeprefix("val/"): v for c, v in log.loc[result.best_epoch].items() if c.startswith("val/")}
    assert result.val_metrics.keys() >= {"auc", "acc", "loss"}
    assert result.val_metrics == pytest.approx(selected, nan_ok=True)


def test_checkpoints_are_removed_unless_kept(tiny2d, make_backbone, fast_train, cpu, tmp_path):
    run(tiny2d, make_backbone(), fast_train, cpu, tmp_path)
    assert not (tmp_path / "checkpoints").exists()
    assert (tmp_path / "metrics.csv").exists()


def test_small_subsets_are_repeated_to_min_samples_per_epoch(tiny2d, make_backbone, cpu, tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=8, schedule="none", min_samples_per_epoch=64)
    run(tiny2d, make_backbone(), cfg, cpu, tmp_path, indices=np.array([0, 1, 2, 5, 7, 9]))
    log = pd.read_csv(tmp_path / "metrics.csv")
    assert log["step"].max() + 1 == 64 // 8


def test_multilabel_task_trains_with_sigmoid_scores(tiny2d, make_backbone, fast_train, cpu, tmp_path):
    def as_multilabel(split):  # label 0: any lesion, label 1: cyst
        return Split(split.images, np.stack([split.labels > 0, split.labels == 2], 1).astype(np.int64))
    data = dataclasses.replace(tiny2d, task="multilabel", class_names=("lesion", "cyst"),
                               train=as_multilabel(tiny2d.train), val=as_multilabel(tiny2d.val),
                               test=as_multilabel(tiny2d.test)).validate()
    result = run(data, make_backbone(), fast_train, cpu, tmp_path)
    assert result.predictions["scores"].shape == (len(data.test), 2)
    assert len(result.per_class["auc"]) == 2 and 0 <= result.metrics["auc"] <= 1


def test_3d_volumes_fine_tune_with_a_truncated_3d_backbone(cpu, tmp_path):
    data = synthetic3d(size=16, n_train=48, n_val=24, n_test=24)
    backbone = create_backbone("resnet_tiny_3d", 1, data.image_size, small_stem=True)
    cfg = TrainConfig(epochs=1, batch_size=16, schedule="none", augment="light")
    result = run(data, backbone, cfg, cpu, tmp_path, strategy={"name": "truncate", "keep": "0-0.75"})
    assert result.predictions["scores"].shape == (24, 3)
    assert not any(k.startswith("layer4.0.") for k in backbone.model.state_dict())


@pytest.mark.parametrize("schedule", ["multistep", "cosine"])
def test_learning_rate_schedules_follow_the_protocol(tiny2d, make_backbone, cpu, tmp_path, schedule):
    from medtransfer.finetune.module import FineTuner
    cfg = TrainConfig(epochs=8, schedule=schedule, lr=1.0)
    module = FineTuner(Classifier(make_backbone(), 3), "multiclass", parse_strategy("end_to_end"), "stage", cfg,
                       Preprocess(2))
    opt_cfg = module.configure_optimizers()
    opt, sched = opt_cfg["optimizer"], opt_cfg["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    if schedule == "multistep":  # MedMNIST: x0.1 at 50 % and 75 % of the epochs
        assert np.allclose(lrs, [1, 1, 1, 1, 0.1, 0.1, 0.01, 0.01])
    else:
        assert lrs[0] == 1.0 and all(a > b for a, b in zip(lrs, lrs[1:]))
