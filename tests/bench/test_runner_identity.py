"""What the runner hands ``RunSpec.run_id`` besides the config reaches the ids: a multi-label dataset's labels (its
uncertain policies) and, for single-label data, the named rare class of natural runs."""

import numpy as np
import pandas as pd
from PIL import Image

import medtransfer.bench.runner as runner
from medtransfer.bench.grid import expand
from medtransfer.config import ExperimentConfig
from medtransfer.config_files import validate_config


def experiment(dataset: dict, **changes) -> ExperimentConfig:
    return validate_config({"name": "ids", "datasets": [dataset], "backbone": {"name": "resnet_tiny"},
                            "strategies": ["linear"], "seeds": [0], "train": {"epochs": 1}, **changes},
                           ExperimentConfig)


def resolved(cfg: ExperimentConfig) -> dict:
    prepared = runner.prepare(cfg)
    (spec,) = expand(cfg)
    return spec.resolved(cfg, *runner.run_identity(prepared, spec))


def test_a_smoothed_label_before_a_u_zeros_one_marks_the_csv_runs_whose_targets_changed(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        rows.append({"path": f"{i}.png", "a": [1, 0, -1][i % 3], "b": [-1, 1, 0][i % 3], "c": [0, -1, 1][i % 3]})
    pd.DataFrame(rows).to_csv(tmp_path / "labels.csv", index=False)
    data = {"name": "csv", "root": str(tmp_path), "csv": "labels.csv", "label_columns": ["a", "b", "c"], "size": 16,
            "workers": 1}
    changed = resolved(experiment({**data, "uncertain": {"a": "smoothed_ones"}},  # b, c: zeros
                                  imbalance={"rare_class": "a"}))  # no rare-class metric on multi-label data
    kept = resolved(experiment({**data, "uncertain": {"a": "zeros", "b": "ones", "c": "smoothed_zeros"}}))
    assert changed["dataset"]["soft_targets"] == "final_labels" and "soft_targets" not in kept["dataset"]
    assert "imbalance" not in changed


def test_a_named_rare_class_enters_the_natural_runs_of_single_label_data():
    data = {"name": "synthetic2d", "n_train": 30, "n_val": 12, "n_test": 12, "size": 16}
    assert resolved(experiment(data, imbalance={"rare_class": "nodule"}))["imbalance"] == {
        "ratio": None, "rare_class": "nodule"}
    assert "imbalance" not in resolved(experiment(data))
