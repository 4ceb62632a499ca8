"""Inputs that used to be accepted silently (or fail with a traceback) are refused before any training, in one
line naming the key, the bad value and what is allowed: repeated YAML keys, milestones that are not fractions, a
warm-up that never unfreezes, seeds outside numpy's range."""

import pytest
import yaml

from medtransfer.cli import main
from medtransfer.config import ExperimentConfig, PretrainConfig
from medtransfer.config_files import load_config, validate_config
from medtransfer.data import load_dataset
from medtransfer.errors import ConfigError, DataError
from medtransfer.pretrain.run import check_options
from medtransfer.seeds import SEED_MAX

DATA = {"name": "synthetic2d", "n_train": 40, "n_val": 20, "n_test": 20, "size": 16}
BASE = {"name": "exp", "datasets": [DATA], "backbone": {"name": "resnet_tiny"}, "train": {"epochs": 5}}


def error_of(tmp_path, text: str, model=ExperimentConfig) -> str:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, model)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message, message
    return message


def config_error(data: dict, model=ExperimentConfig) -> str:
    with pytest.raises(ConfigError) as info:
        validate_config(data, model)
    return str(info.value)


# --- repeated keys -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, key, line, first", [
    ("name: a\nname: b\ndatasets: [synthetic2d]\n", "name", 2, 1),
    ("name: a\ndatasets: [synthetic2d]\ntrain:\n  lr: 0.1\n  epochs: 3\n  lr: 0.01\n", "lr", 6, 4),
    ("name: a\ndatasets:\n  - name: synthetic2d\n    size: 16\n    size: 32\n", "size", 5, 4),
])
def test_a_key_given_twice_is_refused_at_any_depth_naming_key_and_lines(tmp_path, text, key, line, first):
    message = error_of(tmp_path, text)
    assert f"line {line}," in message and f"key {key!r} is given twice (first at line {first})" in message


def test_merge_keys_still_override_as_yaml_specifies(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("name: a\ndatasets: [synthetic2d]\nbase: &base {lr: 0.1, epochs: 3}\n"
                    "train:\n  <<: *base\n  lr: 0.01\n")
    data = yaml.load(path.read_text(), Loader=yaml.SafeLoader)  # the file is valid YAML with an override
    assert data["train"] == {"lr": 0.01, "epochs": 3}
    with pytest.raises(ConfigError, match="base: unknown key"):  # the anchor's home key is not a config key ...
        load_config(path, ExperimentConfig)  # ... but the merge itself raised no duplicate-key error


def test_repeated_key_is_one_cli_error_line(tmp_path, capsys):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(BASE, sort_keys=False) + "name: other\n")
    assert main(["run", str(path), "--output", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "key 'name' is given twice" in err


# --- milestones ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("milestones, bad", [([50, 75], "[50.0, 75.0]"), ([0.5, 1.0], "[1.0]"), ([0.0], "[0.0]"),
                                             ([-0.2, 0.5], "[-0.2]")])
def test_milestones_outside_the_open_unit_interval_are_refused(milestones, bad):
    message = config_error({**BASE, "train": {"milestones": milestones}})
    assert f"train.milestones: {milestones!r} rejected: {bad} outside (0, 1); allowed: fractions" in message


def test_milestones_inside_the_unit_interval_are_kept():
    assert validate_config({**BASE, "train": {"milestones": [0.3, 0.9]}}, ExperimentConfig).train.milestones == [
        0.3, 0.9]


# --- warm-up ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("frozen", [5, 8])
def test_warmup_that_never_unfreezes_is_refused(frozen):
    message = config_error({**BASE, "strategies": ["linear", {"name": "warmup", "frozen_epochs": frozen}]})
    assert message == (f"config: strategies[1] (warmup {frozen}ep): frozen_epochs={frozen} with train.epochs=5: the "
                       "backbone would never be unfrozen, which is linear probing under another name; allowed: "
                       "frozen_epochs < 5")


def test_warmup_default_frozen_epochs_against_a_short_schedule_is_refused():
    """frozen_epochs defaults to 10: a 5-epoch experiment that names just 'warmup' would never fine-tune."""
    assert "frozen_epochs=10 with train.epochs=5" in config_error({**BASE, "strategies": ["warmup"]})


def test_warmup_shorter_than_training_is_accepted():
    cfg = validate_config({**BASE, "strategies": [{"name": "warmup", "frozen_epochs": 4}]}, ExperimentConfig)
    assert cfg.strategies[0].frozen_epochs == 4


# --- seeds ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [-1, SEED_MAX + 1])
def test_experiment_seed_outside_numpy_range_is_refused(seed):
    message = config_error({**BASE, "seeds": [0, seed]})
    assert f"seeds.1: {seed} rejected" in message
    assert ("greater than or equal to 0" if seed < 0 else f"less than or equal to {SEED_MAX}") in message


def test_largest_seed_is_accepted():
    assert validate_config({**BASE, "seeds": [SEED_MAX]}, ExperimentConfig).seeds == [SEED_MAX]


def test_pretrain_seed_outside_range_is_refused():
    assert "seed: -3 rejected" in config_error({"method": "simclr", "data": DATA, "seed": -3}, PretrainConfig)


@pytest.mark.parametrize("seed", [-1, SEED_MAX + 1, 1.5, True])
def test_dataset_seed_option_outside_range_is_refused_before_loading(seed):
    with pytest.raises(DataError, match=rf"dataset synthetic2d: seed={seed!r}; allowed: an integer from 0 to "
                                        rf"{SEED_MAX}$"):
        load_dataset("synthetic2d", n_train=40, n_val=20, n_test=20, size=16, seed=seed)


def test_jigsaw_permutation_seed_outside_range_is_refused():
    cfg = validate_config({"method": "jigsaw", "data": DATA, "method_options": {"permutation_seed": -1}},
                          PretrainConfig)
    with pytest.raises(ConfigError, match=r"method_options.permutation_seed: -1 rejected: .*greater than or equal"):
        check_options(cfg)
