"""benchmarks/quarters_real.py: README's block for the real-data quarters study, from a hand-made results store
(no training): quarters in measured order, the study's pick by the init's family, the grid's best, the figure."""

import importlib.util
import json
import sys
from pathlib import Path

from medtransfer.bench.store import ResultStore, config_hash

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("quarters_real_benchmark", ROOT / "benchmarks" / "quarters_real.py")
bench = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = bench
spec.loader.exec_module(bench)

QUARTERS = {"range 0-0.25": 0.80, "range 0.25-0.5": 0.90, "range 0.5-0.75": 0.85, "range 0.75-1": 0.70}
STRATEGIES = {"end_to_end": {"name": "end_to_end"}, "truncate 0-0.5": {"name": "truncate", "keep": "0-0.5"},
              **{label: {"name": "range", "range": label.split()[1]} for label in QUARTERS}}


def store_with_runs(folder: Path) -> Path:
    """A genesis init (sidecar: restorative) and random, 2 seeds each; genesis: q2 best quarter, truncation best."""
    sidecar = folder / "pretrain" / "genesis"
    sidecar.mkdir(parents=True)
    (sidecar / "backbone.safetensors").write_bytes(b"w")
    (sidecar / "backbone.json").write_text(json.dumps({"sha256": "beef", "family": "restorative"}))
    means = {**QUARTERS, "end_to_end": 0.88, "truncate 0-0.5": 0.95}
    store = ResultStore(folder)
    for init in ("genesis", "random"):
        for label, mean in means.items():
            for seed, wobble in ((0, -0.01), (1, 0.01)):
                config = {"init": {"kind": init, "sha256": "beef" if init == "genesis" else None},
                          "strategy": STRATEGIES[label], "seed": seed}
                labels = {"dataset": "d", "init": init, "strategy": label, "fraction": 0.1, "seed": seed}
                store.start(config_hash(config), config, labels)
                store.finish(config_hash(config), {"auc": mean + wobble - (init == "random") * 0.1}, {}, {},
                             {"fit_s": 30.0, "test_s": 30.0})
    return folder


def test_block_ranks_quarters_names_the_study_pick_by_family_and_draws_the_heatmap(tmp_path):
    folder = store_with_runs(tmp_path / "runs")
    (tmp_path / "docs").mkdir()
    text = bench.block(folder, "auc", tmp_path / "docs" / "depth.png", tmp_path)
    lines = text.splitlines()
    assert "| genesis (restorative) | 10% | q2 0.900 > q3 0.850 > q1 0.800 > q4 0.700 | q3 | " \
           "truncate 0-0.5 0.950 ± 0.014 |" in lines
    assert "| random (none) | 10% | q2 0.800 > q3 0.750 > q1 0.700 > q4 0.600 | end_to_end | " \
           "truncate 0-0.5 0.850 ± 0.014 |" in lines
    assert "(no fusion run)" in lines
    assert "![Mean test auc by fine-tuned depth and init](docs/depth.png)" in lines
    assert (tmp_path / "docs" / "depth.png").stat().st_size > 0
    assert text.splitlines()[-1].startswith("24 finished runs (0 with warnings: see `medtransfer results`), 24 min")


def test_missing_store_is_one_error_line(tmp_path, capsys):
    assert bench.main(["--folder", str(tmp_path / "none"), "--readme", str(tmp_path / "README.md")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
