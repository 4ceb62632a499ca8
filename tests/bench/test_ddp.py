"""DDP by a flag, exercised for real: two CPU processes (gloo) run a grid with a pre-training init through the CLI."""

import subprocess
import sys

import numpy as np
import pytest
import yaml

from medtransfer.bench.store import ResultStore

DATA = {"name": "synthetic2d", "n_train": 96, "n_val": 50, "n_test": 61, "size": 16}  # odd test size: padded shards
DDP = {"accelerator": "cpu", "devices": 2, "ddp": True}


@pytest.mark.slow
def test_two_process_ddp_grid_stores_each_run_once_with_exact_test_predictions(tmp_path):
    experiment = {
        "name": "ddp", "datasets": [DATA], "backbone": {"name": "resnet_tiny"},
        "inits": ["random", {"label": "simclr", "pretrain": {"method": "simclr", "data": DATA, "epochs": 1,
                                                             "backbone": {"name": "resnet_tiny"}, "batch_size": 32,
                                                             "hardware": DDP}}],
        "strategies": ["end_to_end", "linear"], "label_fractions": [0.5], "seeds": [0],
        "train": {"epochs": 2, "batch_size": 16}, "hardware": DDP}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(experiment))
    done = subprocess.run([sys.executable, "-m", "medtransfer.cli", "run", "exp.yaml", "--output", "out",
                           "--no-progress"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("results:") == 1  # only rank 0 reports
    rows = ResultStore(tmp_path / "out").rows(status=None)
    assert len(rows) == 4 and set(rows["status"]) == {"done"}
    for run_dir in (tmp_path / "out" / "runs").iterdir():
        predictions = np.load(run_dir / "test_predictions.npz")
        assert np.array_equal(predictions["index"], np.arange(61))  # gathered from both ranks, padding removed
