"""The imbalance axis through ``medtransfer run``: real (tiny) training at each ratio, the ratio in the results,
the natural and achieved ratios and the rare-class headlines stored, and unreachable ratios refused before training."""

import numpy as np
import pytest
import yaml

import medtransfer.bench.runner as runner
from medtransfer.bench.store import ResultStore
from medtransfer.cli import main
from medtransfer.data.imbalance import EpochSampler

# synthetic2d is balanced (3 classes of 30): ratios come from thinning the rare class (class 0 on the tie)
DATA = {"name": "synthetic2d", "n_train": 90, "n_val": 30, "n_test": 30, "size": 16}
EXPERIMENT = {
    "name": "imbalanced",
    "datasets": [DATA],
    "backbone": {"name": "resnet_tiny"},
    "strategies": ["linear"],
    "seeds": [0],
    "imbalance": {"ratios": [None, 3]},
    "train": {"epochs": 1, "batch_size": 32},
}


def run(tmp_path, experiment) -> int:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(experiment))
    return main(["run", str(path), "--output", str(tmp_path / "out"), "--no-progress"])


def test_imbalance_grid_runs_end_to_end_and_shows_the_ratio(tmp_path, capsys):
    assert run(tmp_path, EXPERIMENT) == 0
    out = capsys.readouterr().out
    datasets = {line.split("  ")[0] for line in out.splitlines() if line.startswith("synthetic2d")}
    assert datasets == {"synthetic2d", "synthetic2d @ 3:1"}  # the results table keeps the two ratios apart
    rows = ResultStore(tmp_path / "out").rows().set_index("dataset")
    natural, at_3 = rows.loc["synthetic2d"], rows.loc["synthetic2d @ 3:1"]
    assert natural["extra"]["imbalance"]["natural_ratio"] == 1.0 and "imbalance" not in natural["config"]
    assert natural["extra"]["class_counts"]["per_class"] == [30, 30, 30]
    record = at_3["extra"]["imbalance"]
    assert record == {"mode": "subsample", "ratio": 3, "rare_class": 0, "rare_named": False, "natural_ratio": 1.0,
                      "achieved_ratio": 3.0, "per_class": [10, 30, 30]}
    assert at_3["extra"]["class_counts"]["per_class"] == [10, 30, 30] and at_3["extra"]["n_train"] == 70
    assert at_3["config"]["imbalance"] == {"ratio": 3, "mode": "subsample", "rare_class": None}
    assert np.isfinite(at_3["metric.ap"]) and at_3["metric.rare_ap"] == at_3["per_class"]["ap"][0]
    assert "metric.rare_ap" not in natural or np.isnan(natural["metric.rare_ap"])  # balanced: no rare class


def test_resample_trains_on_a_fresh_draw_each_epoch(tmp_path, monkeypatch):
    epochs = []
    set_epoch = EpochSampler.set_epoch
    monkeypatch.setattr(EpochSampler, "set_epoch", lambda self, e: (epochs.append(e), set_epoch(self, e)))
    experiment = {**EXPERIMENT, "strategies": ["end_to_end", "linear"], "train": {"epochs": 2, "batch_size": 32},
                  "imbalance": {"ratios": [2], "mode": "resample", "rare_class": "nodule"}}
    assert run(tmp_path, experiment) == 2  # balanced 30 : 30 : 30 cannot reach 2 : 1 keeping every rare example
    experiment["imbalance"]["ratios"] = [1]
    assert run(tmp_path, experiment) == 0
    assert epochs == [0, 1, 0, 1]  # Lightning asks for each epoch's draw, on images and on cached features alike
    for extra in ResultStore(tmp_path / "out").rows()["extra"]:
        record = extra["imbalance"]
        assert record["mode"] == "resample" and record["rare_class"] == 1 and record["achieved_ratio"] == 1.0


def test_unreachable_ratio_is_one_error_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(runner, "fine_tune", lambda *a, **k: pytest.fail("trained despite a bad ratio"))
    assert run(tmp_path, {**EXPERIMENT, "imbalance": [None, 100]}) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert "imbalance.ratios: 100 is out of reach" in err[0] and "largest reachable ratio: 30" in err[0]


def test_resample_refuses_policies_that_count_the_whole_subset(tmp_path, capsys):
    experiment = {**EXPERIMENT, "policies": ["none", {"class_weights": "balanced"}],
                  "imbalance": {"ratios": [None, 1], "mode": "resample"}}
    assert run(tmp_path, experiment) == 2
    assert "policies ['class_weights'] would weigh or sample the whole labelled subset" in capsys.readouterr().err
    experiment["imbalance"]["mode"] = "subsample"  # a fixed subset: the weights count what the run trains on
    experiment["train"] = {"epochs": 1, "batch_size": 32}
    assert run(tmp_path, experiment) == 0
