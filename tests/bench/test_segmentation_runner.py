"""Segmentation through the experiment runner: the same YAML, grid, store and checks as classification."""

import numpy as np
import pytest
import torch
import yaml

from medtransfer.bench.runner import prepare, run_experiment
from medtransfer.bench.store import ResultStore
from medtransfer.config import ExperimentConfig
from medtransfer.config_files import load_config, validate_config
from medtransfer.errors import ConfigError
from medtransfer.models.checkpoint import read_weights, save_backbone
from medtransfer.models.factory import create_backbone

SEG2D = {"name": "synthetic_seg2d", "size": 32, "n_train": 6, "n_val": 2, "n_test": 2}
TRAIN = {"epochs": 1, "batch_size": 4, "segmentation": {"patch_size": 16}}


def test_a_2d_segmentation_experiment_file_stores_dice_and_loads_checkpoint_inits(tmp_path):
    torch.manual_seed(0)
    pretrained = create_backbone("resnet_tiny", 1, 16)
    with torch.no_grad():
        for t in pretrained.model.state_dict().values():
            t.add_(torch.rand_like(t.float()).to(t.dtype))
    save_backbone(pretrained, tmp_path / "weights" / "backbone")
    (tmp_path / "seg.yaml").write_text(yaml.safe_dump({
        "name": "seg", "datasets": [SEG2D], "backbone": {"name": "resnet_tiny"},
        "inits": ["random", {"label": "pre", "checkpoint": "weights/backbone.safetensors"}],
        "strategies": ["linear"], "label_fractions": [0.5], "seeds": [0],
        "train": {**TRAIN, "keep_checkpoints": True}}))
    cfg = load_config(tmp_path / "seg.yaml", ExperimentConfig)
    summary = run_experiment(cfg, tmp_path / "runs", progress=False)
    assert summary.done == 2 and not summary.failed
    store = ResultStore(tmp_path / "runs")
    rows = store.rows()
    assert rows["metric.dice"].between(0, 1).all() and rows["metric.hd95"].notna().all()
    assert {len(r["dice"]) for r in rows["per_class"]} == {3}  # background, vessel, blob
    assert set(rows["extra"].map(lambda e: e["n_train"])) == {3}  # half of the 6 training images
    pre = rows[rows["init"] == "pre"].iloc[0]
    stored = np.load(store.run_dir(pre["run_id"]) / "test_predictions.npz")
    assert stored["dice"].shape == (2, 3) and stored["y_pred"].shape == (2, 32, 32)
    # linear: the encoder is the checkpoint's, bit for bit, after training (BatchNorm buffers included)
    state = torch.load(store.run_dir(pre["run_id"]) / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    saved = read_weights(tmp_path / "weights" / "backbone.safetensors")
    assert all(torch.equal(state[f"model.backbone.model.{k}"], v) for k, v in saved.items())
    assert run_experiment(cfg, tmp_path / "runs", progress=False).skipped == 2  # finished runs are never redone


def test_a_3d_segmentation_grid_runs_end_to_end_with_truncation(tmp_path):
    cfg = validate_config({
        "name": "seg3d", "datasets": [{"name": "synthetic_seg3d", "size": 24, "n_train": 2, "n_val": 1, "n_test": 1}],
        "backbone": {"name": "resnet_tiny_3d"}, "strategies": ["end_to_end", {"name": "truncate", "keep": "0-0.5"}],
        "train": {"epochs": 1, "batch_size": 2, "segmentation": {"patch_size": 16, "loss": "dice"}}},
        ExperimentConfig)
    summary = run_experiment(cfg, tmp_path, progress=False)
    assert summary.done == 2 and not summary.failed, summary.failed
    rows = ResultStore(tmp_path).rows()
    assert rows["metric.dice"].between(0, 1).all()
    full, cut = (rows[rows["strategy"] == s].iloc[0] for s in ("end_to_end", "truncate 0-0.5"))
    assert cut["extra"]["total_params"] < full["extra"]["total_params"]
    stored = np.load(ResultStore(tmp_path).run_dir(full["run_id"]) / "test_predictions.npz")
    assert stored["y_pred"].shape == (1, 24, 24, 24)  # 16^3 patches, whole 24^3 volume predicted


@pytest.mark.parametrize("changes, message", [
    ({"datasets": [{**SEG2D, "resize": 64}]}, "segmentation is scored at native resolution"),
    ({"train": {"segmentation": {"patch_size": 48}}}, "larger than the images"),
    ({"train": {"segmentation": {"patch_size": [16, 16, 16]}}}, "has 3 sizes"),
    ({"train": {"monitor": "auc"}}, "'auc' is not a metric of segmentation"),
    ({"train": {"segmentation": {"loss": "bce"}}}, "'bce' needs background \\+ one class"),
    ({"strategies": [{"name": "truncate", "keep": "0-0.5"}], "train": {"segmentation": {"decoder": "fpn"}}},
     "'fpn' needs four consecutive scales"),
])
def test_segmentation_misconfigurations_fail_before_any_training(changes, message):
    cfg = validate_config({"name": "bad", "datasets": [SEG2D], "backbone": {"name": "resnet_tiny"}, **changes},
                          ExperimentConfig)
    with pytest.raises(ConfigError, match=message):
        prepare(cfg)
