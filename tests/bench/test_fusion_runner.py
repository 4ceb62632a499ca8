"""Fusion inits in a grid: validated before training, identified by every member's content and strategy, run end
to end through ``medtransfer run`` and compared with their members by ``medtransfer report``."""

import numpy as np
import pandas as pd
import pytest
import yaml

from medtransfer.bench.grid import expand
from medtransfer.bench.runner import prepare, run_experiment, run_identity
from medtransfer.bench.store import ResultStore
from medtransfer.cli import main
from medtransfer.config import ExperimentConfig
from medtransfer.config_files import validate_config
from medtransfer.data.normalisation import IMAGENET
from medtransfer.errors import ConfigError
from medtransfer.models.checkpoint import save_backbone
from medtransfer.models.factory import create_backbone

DATA = {"name": "synthetic2d", "n_train": 60, "n_val": 30, "n_test": 30, "size": 16}
TINY_PRETRAIN = {"method": "simclr", "data": DATA, "backbone": {"name": "resnet_tiny"}, "epochs": 1,
                 "batch_size": 32}


def checkpoint(path, seed=0, chans=1, size=16, **meta):
    import torch
    torch.manual_seed(seed)
    return str(save_backbone(create_backbone("resnet_tiny", chans, size), path, **meta))


def experiment(tmp_path, fusion=None, **changes):
    a = checkpoint(tmp_path / "a.safetensors", seed=1)
    b = checkpoint(tmp_path / "b.safetensors", seed=2, normalisation=IMAGENET.to_dict())
    fusion = fusion or {"fuse": [{"label": "a"}, {"label": "b", "strategy": "q2"}]}
    data = {"name": "fusion", "datasets": [DATA], "backbone": {"name": "resnet_tiny"},
            "inits": [{"checkpoint": a}, {"checkpoint": b}, fusion], "strategies": ["end_to_end"],
            "seeds": [0], "train": {"epochs": 1, "batch_size": 32}}
    return validate_config({**data, **changes}, ExperimentConfig)


def ids(cfg):
    prepared = prepare(cfg)
    return {spec.init.name: spec.run_id(cfg, *run_identity(prepared, spec)) for spec in expand(cfg)}


def test_existing_run_ids_are_unchanged():
    """Pinned from the code before fusions existed: stored results of single inits must still be found."""
    cfg = validate_config({"name": "grid", "datasets": [{"name": "synthetic2d", "n_train": 90, "size": 16}],
                           "backbone": {"name": "resnet_tiny"}, "inits": ["random", {"checkpoint": "/c/a.safetensors"}],
                           "strategies": ["end_to_end", "q2"], "seeds": [0], "train": {"epochs": 1, "batch_size": 32}},
                          ExperimentConfig)
    sha = {"random": None, "a": "a" * 64}
    found = [(s.init.name, s.strategy.label(), s.run_id(cfg, sha[s.init.name])[:16]) for s in expand(cfg)]
    assert found == [("random", "end_to_end", "75a73ddd2c042f2b"), ("random", "range 0.25-0.5", "0a2d7f41fe18bc61"),
                     ("a", "end_to_end", "cf349ab03189fcc2"), ("a", "range 0.25-0.5", "8af1838eb829c758")]
    assert expand(cfg)[2].run_id(cfg, "a" * 64, normalisation=IMAGENET)[:16] == "7bb0b0b37d7c80f9"


def test_fusion_run_id_follows_every_member_and_leaves_the_members_ids_alone(tmp_path):
    base = ids(experiment(tmp_path / "1"))
    assert set(base) == {"a", "b", "a+b"} and len(set(base.values())) == 3
    without = ids(experiment(tmp_path / "0", inits=[{"checkpoint": checkpoint(tmp_path / "0/a.safetensors", 1)},
                                                    {"checkpoint": checkpoint(tmp_path / "0/b.safetensors", 2,
                                                                              normalisation=IMAGENET.to_dict())}]))
    assert without == {"a": base["a"], "b": base["b"]}  # adding a fusion changes no other init's runs
    cfg = experiment(tmp_path / "2")
    checkpoint(tmp_path / "2" / "b.safetensors", seed=3, normalisation=IMAGENET.to_dict())  # b's content changes
    changed = ids(cfg)
    assert changed["a"] == base["a"] and changed["b"] != base["b"] and changed["a+b"] != base["a+b"]
    for other in ({"fuse": [{"label": "a"}, {"label": "b", "strategy": "q3"}]},  # a member's strategy
                  {"fuse": [{"label": "a"}, {"label": "b"}]},  # the member takes the run's strategy instead
                  {"fuse": [{"label": "a"}, {"label": "b", "strategy": "q2"}], "how": "ensemble"},
                  {"fuse": [{"label": "a"}, {"label": "b", "strategy": "q2"}], "dropout": 0.2}):
        found = ids(experiment(tmp_path / "1", fusion={**other, "label": "a+b"}))
        assert found["a+b"] != base["a+b"] and (found["a"], found["b"]) == (base["a"], base["b"])
    renamed = ids(experiment(tmp_path / "1", fusion={"label": "pair", "fuse": [{"label": "a"},
                                                                             {"label": "b", "strategy": "q2"}]}))
    assert renamed["pair"] == base["a+b"]  # a label is a name, not content


def test_a_member_normalisation_is_part_of_the_fusion_id(tmp_path):
    base = ids(experiment(tmp_path))
    cfg = experiment(tmp_path)
    cfg.inits[1] = cfg.inits[1].model_copy(update={"normalisation": "unit_range"})
    found = ids(cfg)
    assert found["a+b"] != base["a+b"] and found["a"] == base["a"]


def test_fusion_ids_on_linear_data_are_kept_and_on_nearest_data_are_new():
    """Pinned before fusions followed ``resize_mode``: the linear one acts as before and must find its results; the
    nearest one was fed linear resizes, so its stored results must not be found."""
    cfg = validate_config({"name": "x", "datasets": [{"name": "synthetic2d", "resize": 32},
                                                     {"name": "synthetic2d", "resize": 32, "resize_mode": "nearest"}],
                           "inits": ["random", {"label": "fz", "fuse": [{"label": "random"}, {"label": "random"}]}]},
                          ExperimentConfig)
    found = {s.labels()["dataset"]: s.run_id(cfg, "abc")[:16] for s in expand(cfg) if s.init.fuse}
    assert found["synthetic2d[resize=32]"] == "b77ca43471b881d1"
    assert found["synthetic2d[resize=32,resize_mode=nearest]"] != "4023f472bff58c09"


def test_a_fusion_on_a_nearest_dataset_is_fed_nearest_resizes(tmp_path, monkeypatch):
    from medtransfer.bench import fusion as bench_fusion
    seen, real = [], bench_fusion.fine_tune_fusion
    monkeypatch.setattr(bench_fusion, "fine_tune_fusion",
                        lambda *a, **k: seen.append(k["resize_mode"]) or real(*a, **k))
    cfg = experiment(tmp_path, datasets=[{**DATA, "resize": 24}, {**DATA, "resize": 24, "resize_mode": "nearest"}])
    prepared = prepare(cfg)
    scores = [bench_fusion.run_fusion(cfg, spec, prepared, tmp_path / str(i), False)[0].predictions["scores"]
              for i, spec in enumerate(s for s in expand(cfg) if s.init.fuse)]
    assert seen == ["linear", "nearest"]
    assert np.abs(scores[0] - scores[1]).max() > 1e-3


@pytest.mark.parametrize("misfit, message", [
    ({"chans": 3}, "member ac\\[1\\] was trained on 3-channel 16x16 images but member a on 1-channel 16x16"),
    ({"size": 32}, "member ac\\[1\\] was trained on 1-channel 32x32 images but member a on 1-channel 16x16"),
])
def test_a_misfit_member_is_refused_before_training(tmp_path, misfit, message):
    c = checkpoint(tmp_path / "c.safetensors", **misfit)
    cfg = experiment(tmp_path, fusion={"fuse": [{"label": "a"}, {"init": {"checkpoint": c}, "strategy": "linear"}],
                                       "label": "ac"})
    with pytest.raises(ConfigError, match=f"inits \\(ac\\): {message}.*must share input channels and size"):
        run_experiment(cfg, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fusion, changes, message", [
    ({"fuse": [{"label": "a"}, {"label": "nope"}]}, {}, r"fuse\[1\].label: 'nope' is not an init.*allowed: a, b"),
    (None, {"datasets": [{"name": "synthetic_seg2d", "n_train": 12, "n_val": 6, "n_test": 6, "size": 16}]},
     "fusion is for classification; dataset synthetic_seg2d is a segmentation task"),
    (None, {"strategies": ["warmup"], "train": {"epochs": 20}}, r"fuse\[0\] under strategies\[0\].*'warmup ?"),
    (None, {"policies": ["none", {"mixup": 0.2}]}, r"fusions train without training policies; policies \['mixup"),
    (None, {"imbalance": [None, 2]}, r"fusions train at the natural class ratio only; imbalance.ratios \[2"),
])
def test_an_unrunnable_fusion_is_refused_by_name_before_training(tmp_path, fusion, changes, message):
    with pytest.raises(ConfigError, match=message):
        run_experiment(experiment(tmp_path, fusion=fusion, **changes), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("init, message", [
    ({"fuse": [{"label": "a"}, {"label": "b"}], "checkpoint": "x.pt"}, "not checkpoint and fuse"),
    ({"checkpoint": "x.pt", "how": "concat"}, "how: settings of a fusion"),
    ({"fuse": [{"label": "a"}]}, "at least 2"),
    ({"fuse": [{"label": "a", "init": "random"}, {"label": "b"}]}, "exactly one of them"),
    ({"fuse": [{"label": "a"}, {"label": "b"}], "how": "average"}, "'concat' or 'ensemble'"),
])
def test_malformed_fusions_fail_validation(init, message):
    with pytest.raises(ConfigError, match=message):
        validate_config({"name": "x", "datasets": [DATA], "inits": [init]}, ExperimentConfig)


def test_fusion_runs_end_to_end_and_the_report_compares_it_with_its_members(tmp_path):
    a = checkpoint(tmp_path / "a.safetensors", seed=1, normalisation=IMAGENET.to_dict())
    exp = {"name": "fusion", "datasets": [DATA], "backbone": {"name": "resnet_tiny"},
           "inits": ["random", {"checkpoint": a},
                     {"label": "pair", "fuse": [{"label": "random"}, {"label": "a", "strategy": "linear"}]},
                     {"label": "mixed", "how": "ensemble",
                      "fuse": [{"label": "a"}, {"init": {"label": "ssl", "pretrain": TINY_PRETRAIN}}]}],
           "strategies": ["end_to_end", "linear"], "seeds": [0, 1], "train": {"epochs": 1, "batch_size": 32}}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    out = tmp_path / "out"
    assert main(["run", str(path), "--output", str(out), "--no-progress"]) == 0
    assert main(["report", str(out)]) == 0
    table = pd.read_csv(out / "report" / "fusions.csv")
    compared = sorted(zip(table["init"], table["strategy"], table["baseline"]))
    best = table.loc[table["baseline"].str.startswith("best member: "), "baseline"].str.removeprefix("best member: ")
    assert len(best) == 2 and set(best) <= {"random/end_to_end", "a/linear", "random/linear"}
    assert [c for c in compared if not c[2].startswith("best")] == [
        ("mixed", "end_to_end", "a/end_to_end"), ("mixed", "linear", "a/linear"),  # the inline member is no init
        ("pair", "end_to_end", "a/linear"), ("pair", "end_to_end", "random/end_to_end"),  # a: its own strategy
        ("pair", "linear", "a/linear"), ("pair", "linear", "random/linear")]
    assert set(table["design"]) == {"paired"} and set(table["n"]) == {2}
    cells = ResultStore(out).rows().set_index(["init", "strategy", "seed"])["metric.auc"].sort_index()
    row = table[(table["init"] == "pair") & (table["baseline"] == "a/linear") & (table["strategy"] == "end_to_end")]
    assert row["diff"].item() == pytest.approx((cells["pair", "end_to_end"] - cells["a", "linear"]).mean())
    assert "Fusions against their members" in (out / "report" / "report.html").read_text()
    assert list((out / "pretrain").glob("simclr-*/backbone.safetensors"))  # the inline member was pre-trained
