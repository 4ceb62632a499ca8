"""benchmarks/recommend.py: the README block scored from a hand-made results store and recommendations (no
training): per-cell picks, tau and regrets of the recommender and both baselines, the summary, and the costs."""

import importlib.util
import json
import sys
from pathlib import Path

import pandas as pd
import pytest

from medtransfer.bench.store import ResultStore, config_hash
from medtransfer.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("recommend_benchmark", ROOT / "benchmarks" / "recommend.py")
bench = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = bench  # its dataclass looks its module up there
spec.loader.exec_module(bench)

Q2, Q3 = "range 0.25-0.5", "range 0.5-0.75"
MEANS = {"simclr": {"end_to_end": 0.80, "linear": 0.70, Q2: 0.85, Q3: 0.75},
         "random": {"end_to_end": 0.70, "linear": 0.60, Q2: 0.65, Q3: 0.68}}
SCORES = {"simclr": {Q2: 4, "end_to_end": 3, Q3: 2, "linear": 1},  # the measured order: tau 1, regret 0
          "random": {"linear": 4, Q3: 3, "end_to_end": 2, Q2: 1}}  # picks the worst: regret 0.10, tau -1/3


def experiment_folder(folder: Path) -> Path:
    """Two seeds (mean ± 0.01) of MEANS; simclr's weights have a checkpoint sidecar naming its family."""
    sidecar = folder / "pretrain" / "simclr-synthetic2d-abc"
    sidecar.mkdir(parents=True)
    (sidecar / "backbone.safetensors").write_bytes(b"weights")
    (sidecar / "backbone.json").write_text(json.dumps({"sha256": "feed", "family": "contrastive"}))
    store = ResultStore(folder)
    for init, means in MEANS.items():
        for strategy, mean in means.items():
            for seed, wobble in ((0, -0.01), (1, 0.01)):
                config = {"init": {"kind": init, "sha256": "feed" if init == "simclr" else None},
                          "strategy": strategy, "seed": seed}
                labels = {"dataset": "synthetic2d", "init": init, "strategy": strategy, "fraction": 0.1,
                          "seed": seed}
                store.start(config_hash(config), config, labels)
                store.finish(config_hash(config), {"auc": mean + wobble}, {}, {}, {"fit_s": 10.0, "test_s": 2.0})
    pd.DataFrame([{"dataset": "synthetic2d", "init": init, "fraction": 0.1, "strategy": s, "score": v,
                   "rank": 5 - v, "probe": 0.5, "rgn": 1.0, "shift": 0.2, "cost_s": 6.0, "grid_cost_s": 96.0}
                  for init, scores in SCORES.items() for s, v in scores.items()]) \
        .to_csv(folder / "recommendations.csv", index=False)
    (folder / "recommendations.json").write_text(json.dumps({"cost_s": 12.0, "grid_cost_s": 192.0, "pretrain_s": 30.0,
                                                                 "version": 1}))
    return folder


def test_block_scores_the_recommender_and_both_baselines_per_cell_and_overall(tmp_path):
    result = bench.score_folder(experiment_folder(tmp_path / "quarters"), "auc", {})
    lines = bench.benchmark_block([result], "auc", "TESTCPU, 2 cores", load=0.5).splitlines()
    assert "| quarters | synthetic2d | random (none) | 10% | linear | end_to_end | -0.33 | 0.100 | 0.000 " \
           "| 0.000 (end_to_end) |" in lines
    assert f"| quarters | synthetic2d | simclr (contrastive) | 10% | {Q2} | {Q2} | 1.00 | 0.000 | 0.050 " \
           f"| 0.000 ({Q2}) |" in lines
    assert "| recommender | 2 | 0.33 | 0.050 | 50 % |" in lines
    assert "| study rule | 2 | 0.71 | 0.000 | 100 % |" in lines  # tau 3 / sqrt(18) in both; simclr by its sidecar
    assert "| always end-to-end | 2 | 0.47 | 0.025 | 50 % |" in lines  # tau (1 / sqrt(18) + 3 / sqrt(18)) / 2
    assert "- quarters: probes 12 s, the recommender's grid cost 192 s; measured fine-tuning (fit + test) of the " \
           "ranked inits' finished runs 192 s (6.2% of it). Pre-trainings 30 s in the recommender's run, not " \
           "counted: the grid needs them too." in lines
    assert lines[-1] == "Machine: TESTCPU, 2 cores, load average before the run 0.50."


def test_folders_mode_rewrites_only_the_readme_block_without_training(tmp_path, capsys):
    folder = experiment_folder(tmp_path / "quarters")
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{bench.START}\nplaceholder\n{bench.END}\nrest\n")
    assert bench.main(["--folders", str(folder), "--readme", str(readme), "--family", "random=restorative"]) == 0
    text = readme.read_text()
    assert text.startswith(f"intro\n{bench.START}\nTest auc") and text.endswith(f"{bench.END}\nrest\n")
    assert "random (restorative) | 10% | linear | end_to_end | -0.33 | 0.100 | 0.000 | 0.020 (range 0.5-0.75)" \
        in text  # --family overrides: the rule picks q3 for a restorative init
    assert "| recommender | 2 |" in capsys.readouterr().out


def test_bad_input_is_one_error_line(tmp_path, capsys):
    assert bench.main(["--folders", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path}: no results.sqlite; run the experiment into it first"
    for bad in ("simclr", "simclr=contrastiv"):
        with pytest.raises(ConfigError, match=f"--family: '{bad}' is not INIT=FAMILY with a known family; allowed "
                                              "families: contrastive, multi, predictive, restorative, supervised"):
            bench.parse_families([bad])
