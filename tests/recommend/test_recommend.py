"""``recommend`` end to end on tiny synthetic experiments: the files' format, reproducibility, refusals, the CLI."""

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from medtransfer.cli import main
from medtransfer.config import ExperimentConfig
from medtransfer.config_files import validate_config
from medtransfer.errors import ConfigError
from medtransfer.recommend import recommend
from medtransfer.recommend.output import COLUMNS

pytestmark = pytest.mark.usefixtures("one_thread")
DATA = {"name": "synthetic2d", "n_train": 60, "n_val": 30, "n_test": 10, "size": 16}
EXPERIMENT = {"name": "tiny", "datasets": [DATA], "backbone": {"name": "resnet_tiny"},
              "inits": ["random", {"label": "other", "fuse": [{"label": "random"}, {"init": "random"}]}],
              "strategies": ["end_to_end", "linear", "q2"], "label_fractions": [0.5, 1.0], "seeds": [3],
              "train": {"epochs": 2, "batch_size": 16}}
BIG = 1e9  # a budget that never binds: every run takes all its steps


def experiment(**changes) -> ExperimentConfig:
    return validate_config({**EXPERIMENT, **changes}, ExperimentConfig)


@pytest.fixture(scope="module")
def ranked(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rec")
    return recommend(experiment(), folder, budget=BIG, steps=6), folder


def test_one_ranked_row_per_group_and_strategy_in_the_fixed_format(ranked):
    table, folder = ranked
    stored = pd.read_csv(folder / "recommendations.csv")
    assert list(stored.columns) == COLUMNS
    assert len(stored) == 2 * 3  # two fractions x three strategies; the fusion init is skipped
    assert set(stored["init"]) == {"random"} and set(stored["dataset"]) == {"synthetic2d"}
    for _, rows in stored.groupby("fraction"):
        assert sorted(rows["rank"]) == [1, 2, 3]
        assert rows.sort_values("rank")["score"].is_monotonic_decreasing
        assert rows["cost_s"].nunique() == 1 and rows["cost_s"].iloc[0] > 0
        assert rows["grid_cost_s"].iloc[0] > 0
    linear = stored[stored["strategy"] == "linear"]
    assert (linear[["rgn", "shift"]] == 0).all().all()
    e2e = stored[stored["strategy"] == "end_to_end"]
    assert np.allclose(e2e[["rgn", "shift"]], 1.0)


def test_the_json_holds_per_unit_signals_and_totals(ranked):
    table, folder = ranked
    summary = json.loads((folder / "recommendations.json").read_text())
    assert summary["version"] == 1 and summary["budget"] == BIG and summary["steps"] == 6
    assert summary["cost_s"] == pytest.approx(table.drop_duplicates(["fraction"])["cost_s"].sum())
    assert [s["init"] for s in summary["skipped"]] == ["other"]
    group = summary["signals"]["synthetic2d"]["random"]["0.5"]
    assert len(group["probe"]) == len(group["rgn"]) == len(group["shift"]) == 4
    assert group["steps"] == 6 and not group["stopped_by_budget"] and group["grid_cost"] == "estimated"
    assert not group["over_budget"]
    assert group["candidates"]["range 0.25-0.5"] == {"trained": [1], "readout": 3,
                                                     "trainable_params": group["candidates"]["range 0.25-0.5"]
                                                     ["trainable_params"]}
    row = table[(table["fraction"] == 0.5) & (table["strategy"] == "range 0.25-0.5")].iloc[0]
    assert row["rgn"] == pytest.approx(group["rgn"][1] / np.mean(group["rgn"]))
    assert row["probe"] == pytest.approx(group["probe"][3])


def test_the_same_numbers_twice(ranked, tmp_path):
    table, _ = ranked
    again = recommend(experiment(), tmp_path, budget=BIG, steps=6)
    signals = ["strategy", "score", "rank", "probe", "rgn", "shift"]
    pd.testing.assert_frame_equal(table[signals], again[signals])


def test_a_binding_budget_cuts_the_gradient_profile_and_says_so(tmp_path):
    recommend(experiment(label_fractions=[1.0]), tmp_path, budget=1e-6, steps=50)
    group = json.loads((tmp_path / "recommendations.json").read_text())["signals"]["synthetic2d"]["random"]["1"]
    assert group["steps"] == 1 and group["stopped_by_budget"] and group["over_budget"]


def test_segmentation_is_refused_by_name_before_any_work(tmp_path):
    cfg = experiment(datasets=[{"name": "synthetic_seg2d", "n_train": 8, "n_val": 4, "n_test": 4, "size": 16}],
                     inits=["random"])
    with pytest.raises(ConfigError, match="synthetic_seg2d.*segmentation"):
        recommend(cfg, tmp_path)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("kwargs, key", [({"budget": 0}, "budget"), ({"steps": 0}, "steps")])
def test_bad_arguments_are_refused(tmp_path, kwargs, key):
    with pytest.raises(ConfigError, match=key):
        recommend(experiment(), tmp_path, **kwargs)


def test_cli_prints_ranked_tables_and_writes_the_files(tmp_path, capsys):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({**EXPERIMENT, "inits": ["random"], "label_fractions": [1.0]}))
    assert main(["recommend", str(path), "--output", str(tmp_path / "out"), "--steps", "3"]) == 0
    out = capsys.readouterr().out
    assert "synthetic2d | random | fraction 1: probes" in out and "range 0.25-0.5" in out
    assert (tmp_path / "out" / "recommendations.csv").is_file()
    assert (tmp_path / "out" / "recommendations.json").is_file()


def test_cli_bad_input_is_one_error_line(tmp_path, capsys):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(EXPERIMENT))
    assert main(["recommend", str(path), "--output", str(tmp_path / "out"), "--budget", "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: budget: -1.0")
    assert not (tmp_path / "out").exists()
