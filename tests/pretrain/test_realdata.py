"""SimCLR on real chest X-rays (../shared/data; skipped with a message where absent): learns, and plugs into run."""

from pathlib import Path

import pandas as pd
import pytest

from medtransfer.bench.runner import run_experiment
from medtransfer.bench.store import ResultStore
from medtransfer.config import ExperimentConfig
from medtransfer.config_files import validate_config

REAL = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "medmnist").resolve()
pytestmark = pytest.mark.realdata


def test_simclr_on_pneumoniamnist_images_feeds_fine_tuning(tmp_path):
    if not (REAL / "pneumoniamnist.npz").exists():
        pytest.skip(f"{REAL}/pneumoniamnist.npz is absent: real-data tests need ../shared/data beside the clone")
    data = {"name": "pneumoniamnist", "root": str(REAL)}
    cfg = validate_config({
        "name": "real-simclr", "datasets": [data], "backbone": {"name": "resnet_tiny"},
        "inits": [{"label": "simclr", "pretrain": {"method": "simclr", "data": data, "backbone": {"name": "resnet_tiny"},
                                                   "epochs": 3, "batch_size": 256, "lr": 2e-3}}],
        "strategies": ["linear"], "label_fractions": [0.05], "seeds": [0],
        "train": {"epochs": 3, "batch_size": 64, "schedule": "none", "min_samples_per_epoch": 512}},
        ExperimentConfig)
    run_experiment(cfg, tmp_path, progress=False)
    [log] = list((tmp_path / "pretrain").glob("*/metrics.csv"))
    losses = pd.read_csv(log)["pretrain/loss"].dropna().tolist()
    assert len(losses) == 3 and losses[-1] < losses[0]
    rows = ResultStore(tmp_path).rows()
    assert len(rows) == 1 and rows.iloc[0]["metric.auc"] > 0.5
