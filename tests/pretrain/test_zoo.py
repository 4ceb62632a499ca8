"""Every registered SSL method, in every dimension it supports, pre-trains and its checkpoint fine-tunes through
``run``; in the dimensions it does not support it is refused before any training."""

import pytest

from medtransfer.bench.runner import run_experiment
from medtransfer.bench.store import ResultStore
from medtransfer.config import ExperimentConfig
from medtransfer.config_files import validate_config
from medtransfer.errors import ConfigError
from medtransfer.models.checkpoint import read_metadata
from medtransfer.pretrain import METHODS

DATA = {2: {"name": "synthetic2d", "n_train": 48, "n_val": 24, "n_test": 24, "size": 16},
        3: {"name": "synthetic3d", "n_train": 32, "n_val": 16, "n_test": 16, "size": 16}}


def backbone_for(method, dims):
    if dims == 3:
        return {"name": "resnet_tiny_3d", "small_stem": True}
    return {"name": "resnet_tiny"} if "resnet" in (method.backbone_families or ("resnet",)) else {"name": "vit_micro"}


def experiment(name, dims):
    backbone = backbone_for(METHODS[name], dims)
    pretraining = {"method": name, "data": DATA[dims], "backbone": backbone, "epochs": 1, "batch_size": 16}
    return validate_config({
        "name": f"zoo-{name}", "datasets": [DATA[dims]], "backbone": backbone,
        "inits": [{"label": name, "pretrain": pretraining}], "strategies": ["linear"], "label_fractions": [0.5],
        "seeds": [0], "train": {"epochs": 1, "batch_size": 16}, "hardware": {"accelerator": "cpu"}},
        ExperimentConfig)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_pretrains_and_fine_tunes_through_run(tmp_path, name, dims):
    cfg = experiment(name, dims)
    if dims not in METHODS[name].spatial_dims:
        with pytest.raises(ConfigError, match=name):
            run_experiment(cfg, tmp_path, progress=False)
        return
    summary = run_experiment(cfg, tmp_path, progress=False)
    assert summary.failed == [] and summary.done == 1
    [checkpoint] = (tmp_path / "pretrain").glob("*/backbone.safetensors")
    assert read_metadata(checkpoint)["method"] == name
    rows = ResultStore(tmp_path).rows()
    assert len(rows) == 1 and 0 <= rows.iloc[0]["metric.auc"] <= 1
