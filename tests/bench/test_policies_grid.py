"""Training policies as a grid axis: run ids (old ones kept), refusals before training, and a tiny grid end to end
through ``medtransfer run`` and ``medtransfer report`` with its stacking table."""

import lightning as L
import numpy as np
import pandas as pd
import pytest
import yaml

import medtransfer.bench.runner as runner
from medtransfer.bench.grid import expand
from medtransfer.bench.runner import prepare
from medtransfer.bench.store import ResultStore
from medtransfer.cli import main
from medtransfer.config import ExperimentConfig, HardwareConfig, TrainConfig
from medtransfer.config_files import validate_config
from medtransfer.data.synthetic import synthetic2d
from medtransfer.errors import ConfigError
from medtransfer.finetune.policies import parse_policy
from medtransfer.finetune.strategies import parse_strategy
from medtransfer.finetune.train import fine_tune
from medtransfer.models.checkpoint import save_backbone
from medtransfer.models.factory import create_backbone

SMALL = {"name": "synthetic2d", "n_train": 90, "n_val": 45, "n_test": 60, "size": 16}
GRID = {"name": "grid", "datasets": [SMALL], "backbone": {"name": "resnet_tiny"},
        "inits": ["random", {"checkpoint": "/ckpt/a.safetensors"}], "strategies": ["end_to_end", "linear"],
        "seeds": [0], "train": {"epochs": 1, "batch_size": 32, "augment": "light"}}
SHA = {"random": None, "a": "a" * 64}
# computed on the code before policies existed (train.augment: light, so that setting keeps its ids too)
STORED_IDS = ["76072b7f55d2515058ced3e92c4991d898abf4ec5d1d7bb182a73e9840b8a881",
              "02f422ba290781d15ed0b5696cf109298521faca571f5a63b25486f98f6ffa43",
              "4dc0c115169345c221aa65bd44f4b9b4274dd66a937f3cbd885a271d4ec33f21",
              "dd8bd2ca30482251ffb16bdc0ad9a85c3e2eaf10cad6650ae5c91294bac168e2"]


def cfg_of(**changes) -> ExperimentConfig:
    return validate_config({**GRID, **changes}, ExperimentConfig)


def ids(cfg):
    return [s.run_id(cfg, SHA[s.init.name]) for s in expand(cfg)]


def test_runs_without_a_policy_keep_the_ids_stored_before_policies():
    assert ids(cfg_of()) == STORED_IDS
    assert ids(cfg_of(policies=["none"])) == STORED_IDS


def test_a_policy_is_a_grid_axis_that_keys_its_runs():
    cfg = cfg_of(policies=["none", {"mixup": 0.2}], train={"epochs": 1, "batch_size": 32})
    specs = expand(cfg)
    assert len(specs) == 8 and {s.labels()["policy"] for s in specs} == {"none", "mixup 0.2"}
    mixup = [s for s in specs if not s.policy.is_none]
    assert mixup[0].resolved(cfg, None)["policy"] == {"mixup": {"alpha": 0.2}}
    assert "policy" not in specs[0].resolved(cfg, None)
    assert len(set(ids(cfg))) == 8


def test_segmentation_refuses_mixup_by_name_before_training(monkeypatch):
    monkeypatch.setattr(runner, "fine_tune", lambda *a, **k: pytest.fail("trained"))
    seg = {"name": "synthetic_seg2d", "size": 32, "n_train": 6, "n_val": 2, "n_test": 2}
    cfg = cfg_of(datasets=[seg], inits=["random"], strategies=["end_to_end"], train={"epochs": 1},
                 policies=["none", {"augment": "strong"}, {"mixup": 0.2}])
    with pytest.raises(ConfigError, match=r"policies\[2\] \(mixup 0.2\) on dataset synthetic_seg2d: mixup cannot "
                                          r"act on segmentation training; allowed for segmentation: augment"):
        runner.run_experiment(cfg, "unused", progress=False)


@pytest.mark.parametrize("changes, expected", [
    ({"policies": [{"augment": "strong"}]}, r"augment with train.augment: light gives two levels"),
    ({"strategies": ["knn"], "train": {"epochs": 1}, "policies": ["none", {"focal": 2}]},
     r"policies\[1\] \(focal 2\) with strategy knn"),
])
def test_conflicting_policies_are_refused_in_prepare(changes, expected):
    with pytest.raises(ConfigError, match=expected):
        prepare(cfg_of(inits=["random"], **changes))


@pytest.mark.parametrize("policy, cached", [({"class_weights": "balanced", "balanced_sampler": True}, True),
                                            ({"mixup": 0.2}, False)])
def test_frozen_features_are_cached_unless_a_policy_changes_the_images(tmp_path, policy, cached):
    data = synthetic2d(size=16, n_train=48, n_val=24, n_test=24, seed=1)
    L.seed_everything(0, verbose=False)
    backbone = create_backbone("resnet_tiny", data.in_chans, data.image_size)
    result = fine_tune(data, np.arange(48), backbone, parse_strategy("linear"), backbone.default_view,
                       TrainConfig(epochs=1, batch_size=16, schedule="none"), HardwareConfig(accelerator="cpu"), 0,
                       tmp_path, policy=parse_policy(policy))
    assert ("features_s" in result.timings) == cached and 0 <= result.metrics["auc"] <= 1


def test_two_policies_run_end_to_end_and_the_report_stacks_them(tmp_path, capsys):
    L.seed_everything(7, verbose=False)
    ckpt = save_backbone(create_backbone("resnet_tiny", 1, (16, 16)), tmp_path / "other.safetensors")
    experiment = {"name": "stack", "datasets": [{**SMALL, "n_train": 48, "n_val": 24, "n_test": 24}],
                  "backbone": {"name": "resnet_tiny"}, "inits": ["random", {"checkpoint": str(ckpt)}],
                  "strategies": ["end_to_end"], "seeds": [0, 1], "train": {"epochs": 1, "batch_size": 16},
                  "policies": ["none", {"augment": "strong", "mixup": 0.2}], "hardware": {"accelerator": "cpu"}}
    path = tmp_path / "stack.yaml"
    path.write_text(yaml.safe_dump(experiment))
    folder = tmp_path / "runs"
    assert main(["run", str(path), "--output", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "augment strong + mixup 0.2" in out  # the results table has the policy as a column
    rows = ResultStore(folder).rows()
    assert sorted(rows["policy"].value_counts().items()) == [("augment strong + mixup 0.2", 4), ("none", 4)]
    assert main(["report", str(folder)]) == 0
    html = (folder / "report" / "report.html").read_text()
    assert "Stacking: init gain per training policy" in html
    stacked = (folder / "report" / "stacking.md").read_text()
    header = next(line for line in stacked.splitlines() if line.startswith("| dataset"))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "dataset", "labels", "strategy", "init", "none", "augment strong + mixup 0.2"]
    (row,) = [line for line in stacked.splitlines() if "| other" in line]
    assert row.count("n=2)") == 2  # one paired comparison per policy, both seeds paired
    table = pd.read_csv(folder / "report" / "stacking.csv")
    assert sorted(table["policy"]) == ["augment strong + mixup 0.2", "none"] and set(table["baseline"]) == {
        "random/end_to_end"}
    np.testing.assert_allclose(table["diff"], table["mean"] - table["baseline_mean"])
    assert table["p_holm"].notna().all()


@pytest.mark.parametrize("dataset, backbone, policies", [
    ({"name": "synthetic_seg2d", "size": 32, "n_train": 6, "n_val": 2, "n_test": 2}, "resnet_tiny",
     [{"augment": "strong"}]),
    ({"name": "synthetic_seg3d", "size": 16, "n_train": 4, "n_val": 2, "n_test": 2}, "resnet_tiny_3d",
     [{"augment": "strong"}]),
    ({"name": "synthetic3d", "size": 16, "n_train": 24, "n_val": 12, "n_test": 12}, "resnet_tiny_3d",
     [{"augment": "strong", "cutmix": 1.0}, {"focal": 2, "class_weights": "inverse_sqrt", "balanced_sampler": True}]),
])
def test_accepted_policies_train_in_2d_and_3d(tmp_path, dataset, backbone, policies):
    cfg = validate_config({"name": "p", "datasets": [dataset], "backbone": {"name": backbone}, "policies": policies,
                           "train": {"epochs": 1, "batch_size": 4}, "hardware": {"accelerator": "cpu"}},
                          ExperimentConfig)
    summary = runner.run_experiment(cfg, tmp_path, progress=False, fail_fast=True)
    assert summary.done == len(policies) and not summary.failed
