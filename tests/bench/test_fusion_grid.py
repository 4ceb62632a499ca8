"""A fusion whose members all name their own strategy runs once per cell, under a strategy that says so; one with a
member taking the run's strategy runs once per experiment strategy, with the ids it always had."""

import pandas as pd
import yaml

from medtransfer.bench.grid import expand
from medtransfer.cli import main
from medtransfer.config import ExperimentConfig
from medtransfer.config_files import validate_config
from medtransfer.finetune.fusion import MembersStrategy
from medtransfer.models.checkpoint import save_backbone
from medtransfer.models.factory import create_backbone
from medtransfer.report.coverage import MEMBERS

DATA = {"name": "synthetic2d", "n_train": 60, "n_val": 30, "n_test": 30, "size": 16}
OWN = {"label": "own", "fuse": [{"label": "a", "strategy": "q2"}, {"label": "b", "strategy": "q3"}]}
MIXED = {"label": "mixed", "fuse": [{"label": "a"}, {"label": "b", "strategy": "q3"}]}


def grid(*fusions, **changes):
    return validate_config({"name": "grid", "datasets": [DATA], "backbone": {"name": "resnet_tiny"},
                            "inits": [{"label": "a", "checkpoint": "/c/a.safetensors"},
                                      {"label": "b", "checkpoint": "/c/b.safetensors"}, *fusions],
                            "strategies": ["end_to_end", "q2", "linear"], "label_fractions": [0.5, 1.0],
                            "seeds": [0, 1], "train": {"epochs": 1, "batch_size": 32}, **changes}, ExperimentConfig)


def test_an_all_own_fusion_runs_once_per_cell_and_a_mixed_one_once_per_strategy():
    specs = expand(grid(OWN, MIXED))
    own = [s for s in specs if s.init.name == "own"]
    mixed = [s for s in specs if s.init.name == "mixed"]
    assert sorted((s.fraction, s.seed) for s in own) == [(f, seed) for f in (0.5, 1.0) for seed in (0, 1)]
    assert {s.strategy.label() for s in own} == {"members: range 0.25-0.5 + range 0.5-0.75"}
    assert len(mixed) == 3 * 2 * 2 and {s.strategy.label() for s in mixed} == {"end_to_end", "range 0.25-0.5",
                                                                                 "linear"}
    assert len(specs) == 2 * 12 + 4 + 12
    assert [s.seed for s in specs] == sorted(s.seed for s in specs)  # still whole seeds first
    spec = own[0]
    assert spec.labels()["strategy"] == "members: range 0.25-0.5 + range 0.5-0.75"
    assert spec.resolved(grid(OWN), "f" * 64)["strategy"] == {  # the store says what trained
        "name": MEMBERS, "members": [{"name": "range", "range": "0.25-0.5"}, {"name": "range", "range": "0.5-0.75"}]}


def test_the_members_strategy_is_frozen_only_when_every_member_is():
    specs = {s.init.name: s.strategy for s in expand(grid(
        {"label": "probe", "fuse": [{"label": "a", "strategy": "linear"}, {"label": "b", "strategy": "linear"}]},
        OWN, seeds=[0], label_fractions=[1.0]))}
    assert isinstance(specs["probe"], MembersStrategy) and specs["probe"].frozen_backbone
    assert not specs["own"].frozen_backbone and specs["probe"].name == MEMBERS


def test_a_mixed_fusion_keeps_its_run_ids():
    """Pinned from the code before all-own fusions ran once per cell."""
    cfg = grid(MIXED, strategies=["end_to_end", "q2"], label_fractions=[1.0], seeds=[0],
               datasets=[{"name": "synthetic2d", "n_train": 90, "size": 16}])
    found = [(s.strategy.label(), s.run_id(cfg, "f" * 64)[:16]) for s in expand(cfg) if s.init.fuse]
    assert found == [("end_to_end", "718fe0bf6594110f"), ("range 0.25-0.5", "fe66bc51e59f9ca0")]


def checkpoint(path, seed):
    import torch
    torch.manual_seed(seed)
    return str(save_backbone(create_backbone("resnet_tiny", 1, 16), path))


def test_an_all_own_fusion_is_compared_with_its_members_own_cells(tmp_path):
    exp = {"name": "own", "datasets": [DATA], "backbone": {"name": "resnet_tiny"},
           "inits": [{"label": "a", "checkpoint": checkpoint(tmp_path / "a.safetensors", 1)},
                     {"label": "b", "checkpoint": checkpoint(tmp_path / "b.safetensors", 2)},
                     {**OWN, "fuse": [{"label": "a", "strategy": "q2"}, {"label": "b", "strategy": "linear"}]}],
           "strategies": ["q2", "linear"], "seeds": [0, 1], "train": {"epochs": 1, "batch_size": 32}}
    path, out = tmp_path / "exp.yaml", tmp_path / "out"
    path.write_text(yaml.safe_dump(exp))
    assert main(["run", str(path), "--output", str(out), "--no-progress"]) == 0
    assert main(["report", str(out), "--baseline", "a"]) == 0
    table = pd.read_csv(out / "report" / "fusions.csv")
    own = "members: range 0.25-0.5 + linear"
    best = table["baseline"].str.startswith("best member: ")
    assert sorted(zip(table.loc[~best, "strategy"], table.loc[~best, "baseline"])) == [
        (own, "a/range 0.25-0.5"), (own, "b/linear")]
    assert list(table.loc[best, "strategy"]) == [own]
    assert table.loc[best, "baseline"].item().removeprefix("best member: ") in {"a/range 0.25-0.5", "b/linear"}
    assert set(table["design"]) == {"paired"} and set(table["n"]) == {2}
    # the fusion's single strategy is no hole in the grid, and the members lack no run under it
    assert pd.read_csv(out / "report" / "missing_runs.csv").empty
    summary = pd.read_csv(out / "report" / "summary.csv")
    assert sorted(set(zip(summary["init"], summary["strategy"]))) == [
        ("a", "linear"), ("a", "range 0.25-0.5"), ("b", "linear"), ("b", "range 0.25-0.5"), ("own", own)]
