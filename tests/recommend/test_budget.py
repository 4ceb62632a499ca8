"""The issue's "Done when": ``recommend`` costs, measured, at most 10 % of the grid it ranks, on the demo experiment.

``examples/quickstart.yaml`` (``make demo``) as it is — data, backbone, both inits, strategies and schedule — except
one pre-training epoch instead of 40 (pre-training is not probe cost), one seed instead of two and the 1 % fraction
only (each halves the grid, which only makes the bound harder to meet).
"""

from pathlib import Path

import pytest
import yaml

from medtransfer.bench.runner import run_experiment
from medtransfer.bench.store import ResultStore
from medtransfer.config import ExperimentConfig
from medtransfer.config_files import validate_config
from medtransfer.recommend import recommend

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]
DEMO = Path(__file__).parents[2] / "examples" / "quickstart.yaml"


def test_recommend_costs_at_most_a_tenth_of_the_demo_grid(tmp_path):
    raw = yaml.safe_load(DEMO.read_text())
    raw["inits"][1]["pretrain"]["epochs"] = 1
    raw.update(seeds=[0], label_fractions=[0.01])
    cfg = validate_config(raw, ExperimentConfig)

    before = recommend(cfg, tmp_path)  # before the grid: its cost is estimated
    run_experiment(cfg, tmp_path, progress=False)
    grid_s = sum(t["fit_s"] for t in ResultStore(tmp_path).rows()["timings"])
    after = recommend(cfg, tmp_path)  # after: measured

    for table in (before, after):
        probes_s = table.drop_duplicates(["dataset", "init", "fraction"])["cost_s"].sum()
        assert 0 < probes_s <= 0.10 * grid_s, f"probes {probes_s:.2f} s vs grid {grid_s:.2f} s"
    assert after.drop_duplicates(["init"])["grid_cost_s"].sum() == pytest.approx(grid_s)
    assert set(before["init"]) == {"random", "simclr"} and len(before) == 2 * 3
