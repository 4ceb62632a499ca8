"""The imbalance axis in an experiment file and in run labels."""

import pytest

from medtransfer.config import ExperimentConfig
from medtransfer.config_files import validate_config
from medtransfer.errors import ConfigError
from medtransfer.imbalance import Imbalance, split_ratio, with_ratio


def test_config_shorthand_and_errors_name_the_key():
    base = {"name": "x", "datasets": ["synthetic2d"]}
    cfg = validate_config({**base, "imbalance": [None, 10, 50]}, ExperimentConfig)
    assert [s and s.ratio for s in cfg.imbalance.settings()] == [None, 10, 50]
    assert validate_config(base, ExperimentConfig).imbalance.settings() == [None]
    with pytest.raises(ConfigError, match=r"imbalance.ratios.0: 0.5 rejected"):
        validate_config({**base, "imbalance": [0.5]}, ExperimentConfig)
    with pytest.raises(ConfigError, match=r"imbalance.mode: 'oversample' rejected"):
        validate_config({**base, "imbalance": {"ratios": [2], "mode": "oversample"}}, ExperimentConfig)
    with pytest.raises(ConfigError, match=r"imbalance.ratio: unknown key; allowed here: mode, rare_class, ratios"):
        validate_config({**base, "imbalance": {"ratio": [2]}}, ExperimentConfig)


def test_dataset_label_carries_the_ratio_only_when_set():
    assert with_ratio("pneumoniamnist", None) == "pneumoniamnist"
    label = with_ratio("pneumoniamnist", Imbalance(10))
    assert label == "pneumoniamnist @ 10:1" and split_ratio(label) == ("pneumoniamnist", "10:1")
    assert split_ratio("pneumoniamnist") == ("pneumoniamnist", "natural")
