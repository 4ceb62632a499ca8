"""Experiment and pre-training YAML: one actionable ConfigError per mistake, paths relative to the file, shorthands."""

from pathlib import Path

import pytest
import yaml

from medtransfer.config import DatasetConfig, ExperimentConfig, PretrainConfig, TrainConfig
from medtransfer.config_files import load_config, validate_config
from medtransfer.errors import ConfigError
from medtransfer.finetune.strategies import DepthRangeStrategy, EndToEnd, Linear, Truncate

DATA = {"name": "synthetic2d", "n_train": 90, "n_val": 45, "n_test": 60, "size": 16}
BASE = {"name": "exp", "datasets": [DATA], "backbone": {"name": "resnet_tiny"}}
TRAIN_KEYS = sorted(TrainConfig.model_fields)
EXPERIMENT_KEYS = sorted(ExperimentConfig.model_fields)


def write(folder: Path, data, name="exp.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def error_of(tmp_path, data, model=ExperimentConfig) -> str:
    """The message of the one ConfigError that loading ``data`` from a YAML file raises."""
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_config(path, model)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message  # names the file
    assert "\n" not in message, message  # one line, ready for the CLI
    return message


def test_valid_experiment_and_defaults(tmp_path):
    cfg = load_config(write(tmp_path, BASE), ExperimentConfig)
    assert cfg.name == "exp" and cfg.backbone.name == "resnet_tiny"
    assert [i.name for i in cfg.inits] == ["random"]
    assert [type(s) for s in cfg.strategies] == [EndToEnd]
    assert cfg.label_fractions == [1.0] and cfg.seeds == [0]
    assert cfg.train.epochs == 100 and cfg.output is None


def test_quickstart_example_is_valid():
    path = Path(__file__).parents[2] / "examples" / "quickstart.yaml"
    cfg = load_config(path, ExperimentConfig)
    assert [i.name for i in cfg.inits] == ["random", "simclr"]
    assert [s.label() for s in cfg.strategies] == ["end_to_end", "linear", "range 0.25-0.5"]
    assert isinstance(cfg.inits[1].pretrain, PretrainConfig) and cfg.inits[1].pretrain.epochs == 40
    assert cfg.label_fractions == [0.01, 0.1]


# --- errors: key, bad value and allowed values, in one line ------------------------------------------------------

def test_unknown_top_level_key_lists_allowed_keys(tmp_path):
    message = error_of(tmp_path, {**BASE, "epochs": 3})
    assert "epochs: unknown key" in message
    assert ", ".join(EXPERIMENT_KEYS) in message


def test_unknown_train_key_lists_train_keys(tmp_path):
    message = error_of(tmp_path, {**BASE, "train": {"epoch": 3}})
    assert "train.epoch: unknown key" in message
    assert ", ".join(TRAIN_KEYS) in message
    assert "datasets" not in message  # the keys of the section, not of the top level


def test_unknown_hardware_key_lists_hardware_keys(tmp_path):
    message = error_of(tmp_path, {**BASE, "hardware": {"gpus": 2}})
    assert "hardware.gpus: unknown key" in message and "accelerator" in message and "num_nodes" in message


def test_wrong_type(tmp_path):
    message = error_of(tmp_path, {**BASE, "train": {"epochs": "ten"}})
    assert "train.epochs" in message and "'ten'" in message and "integer" in message


def test_out_of_range_number(tmp_path):
    message = error_of(tmp_path, {**BASE, "train": {"lr": -1}})
    assert "train.lr" in message and "-1" in message and "greater than 0" in message


def test_unknown_backbone(tmp_path):
    message = error_of(tmp_path, {**BASE, "backbone": {"name": "resnet9000"}})
    assert "backbone.name" in message and "'resnet9000'" in message
    assert "resnet_tiny" in message and "resnet50" in message


def test_unknown_strategy_lists_names_and_quarters(tmp_path):
    message = error_of(tmp_path, {**BASE, "strategies": ["end_to_end", "q5"]})
    assert "strategies[1]" in message and "'q5'" in message
    for name in ("end_to_end", "linear", "range", "truncate", "q1", "q2", "q3", "q4"):
        assert name in message


def test_strategy_without_name(tmp_path):
    message = error_of(tmp_path, {**BASE, "strategies": [{"range": "q2"}]})
    assert "strategies[0]" in message and "'name'" in message and "linear" in message


def test_bad_strategy_parameter(tmp_path):
    message = error_of(tmp_path, {**BASE, "strategies": [{"name": "range", "range": "0.9-0.1"}]})
    assert "strategies[0] (range).range" in message and "'0.9-0.1'" in message
    assert "0 <= START < END <= 1" in message and "q1" in message


def test_unknown_strategy_parameter(tmp_path):
    message = error_of(tmp_path, {**BASE, "strategies": [{"name": "truncate", "kep": "0-0.5"}]})
    assert "kep" in message and "keep" in message and "train" in message


def test_unknown_dataset(tmp_path):
    message = error_of(tmp_path, {**BASE, "datasets": ["mnistx"]})
    assert "datasets.0.name" in message and "'mnistx'" in message
    assert "synthetic2d" in message and "pneumoniamnist" in message


def test_unknown_pretrain_method_inline(tmp_path):
    init = {"label": "ssl", "pretrain": {"method": "simsiam", "data": DATA, "backbone": {"name": "resnet_tiny"}}}
    message = error_of(tmp_path, {**BASE, "inits": ["random", init]})
    assert "inits.1.pretrain.method" in message and "'simsiam'" in message and "simclr" in message and "byol" in message
    assert "not a valid path" not in message  # the file branch of "FILE or inline config" is not reported too


def test_unknown_key_inside_inline_pretrain_lists_pretrain_keys(tmp_path):
    init = {"pretrain": {"data": DATA, "epoch": 1}}
    message = error_of(tmp_path, {**BASE, "inits": [init]})
    assert "inits.0.pretrain.epoch: unknown key" in message
    assert ", ".join(sorted(PretrainConfig.model_fields)) in message


def test_unknown_method_in_pretrain_file(tmp_path):
    message = error_of(tmp_path, {"method": "simsiam", "data": DATA}, model=PretrainConfig)
    assert "method" in message and "'simsiam'" in message and "allowed:" in message and "spark" in message


def test_pretrain_file_unknown_key(tmp_path):
    message = error_of(tmp_path, {"data": DATA, "lrr": 1}, model=PretrainConfig)
    assert "lrr: unknown key" in message and "warmup_epochs" in message


@pytest.mark.parametrize("fractions, bad", [([0, 0.5], "0.0"), ([0.1, 1.5], "1.5"), ([-0.1], "-0.1")])
def test_label_fraction_outside_unit_interval(tmp_path, fractions, bad):
    message = error_of(tmp_path, {**BASE, "label_fractions": fractions})
    assert "label_fractions" in message and bad in message and "(0, 1]" in message


def test_label_fraction_one_is_allowed_and_fractions_are_sorted_and_unique(tmp_path):
    cfg = load_config(write(tmp_path, {**BASE, "label_fractions": [1, 0.1, 0.01, 0.1]}), ExperimentConfig)
    assert cfg.label_fractions == [0.01, 0.1, 1.0]


def test_duplicate_strategies(tmp_path):
    # q2 and 25-50% are the same range once parsed
    message = error_of(tmp_path, {**BASE, "strategies": ["q2", {"name": "range", "range": "25-50%"}]})
    assert "duplicate strategies" in message and "range 0.25-0.5" in message


def test_duplicate_init_labels(tmp_path):
    inits = ["random", {"label": "random", "checkpoint": "a.safetensors"}]
    message = error_of(tmp_path, {**BASE, "inits": inits})
    assert message.split(": ", 1)[1].startswith("inits:")
    assert "distinct labels" in message and "['random', 'random']" in message and "label:" in message


def test_duplicate_seeds(tmp_path):
    message = error_of(tmp_path, {**BASE, "seeds": [0, 1, 0]})
    assert "seeds" in message and "[0, 1, 0]" in message and "duplicate" in message


def test_duplicate_datasets(tmp_path):
    message = error_of(tmp_path, {**BASE, "datasets": [DATA, dict(DATA)]})
    assert "datasets" in message and "duplicate" in message and "synthetic2d" in message


def test_init_string_other_than_random(tmp_path):
    message = error_of(tmp_path, {**BASE, "inits": ["imagenet"]})
    assert "inits.0" in message and "'imagenet'" in message and "'random'" in message and "checkpoint" in message


def test_init_with_checkpoint_and_pretrain(tmp_path):
    message = error_of(tmp_path, {**BASE, "inits": [{"checkpoint": "a.safetensors", "pretrain": "p.yaml"}]})
    assert "inits.0" in message
    assert "give one of checkpoint, zoo, timm, pretrain or fuse, not checkpoint and pretrain" in message


def test_missing_required_key(tmp_path):
    message = error_of(tmp_path, {"datasets": [DATA]})
    assert "name: required key is missing" in message


def test_several_mistakes_are_one_error(tmp_path):
    message = error_of(tmp_path, {**BASE, "bogus": 1, "train": {"epochs": "ten"}})
    assert "bogus: unknown key" in message and "train.epochs" in message


def test_malformed_yaml(tmp_path):
    message = error_of(tmp_path, "name: x\ndatasets: [synthetic2d\n")
    assert "malformed YAML" in message and "line" in message


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="nope.yaml: no such file"):
        load_config(path, ExperimentConfig)
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path, ExperimentConfig)  # a folder is not a file


@pytest.mark.parametrize("text, kind", [("- a\n- b\n", "list"), ("just text\n", "str"), ("", "NoneType")])
def test_top_level_not_a_mapping(tmp_path, text, kind):
    message = error_of(tmp_path, text)
    assert "mapping" in message and kind in message


def test_validate_config_names_its_source():
    with pytest.raises(ConfigError, match=r"^my-source: bogus: unknown key"):
        validate_config({**BASE, "bogus": 1}, ExperimentConfig, source="my-source")


# --- relative paths -----------------------------------------------------------------------------------------------

def test_relative_paths_resolve_against_the_yaml_folder(tmp_path, monkeypatch):
    folder = tmp_path / "experiments" / "a"
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the working directory must not matter
    data = {
        **BASE,
        "output": "out",
        "datasets": [{"name": "pneumoniamnist", "root": "data"}, {"name": "breastmnist", "root": "/abs/data"}],
        "inits": [
            "random",
            {"checkpoint": "ckpt/b.safetensors"},
            {"pretrain": "../pre.yaml"},
            {"label": "inline", "pretrain": {"data": {"name": "pneumoniamnist", "root": "pdata"},
                                             "init": "w.safetensors", "output": "pout"}},
        ],
    }
    cfg = load_config(write(folder, data), ExperimentConfig)
    base = folder.resolve()
    assert cfg.output == base / "out"
    assert cfg.datasets[0].options["root"] == str(base / "data")
    assert cfg.datasets[1].options["root"] == "/abs/data"  # absolute paths stay as they are
    assert cfg.inits[1].checkpoint == base / "ckpt" / "b.safetensors" and cfg.inits[1].name == "b"
    assert cfg.inits[2].pretrain == (tmp_path / "experiments" / "pre.yaml").resolve() and cfg.inits[2].name == "pre"
    inline = cfg.inits[3].pretrain
    assert isinstance(inline, PretrainConfig)
    assert inline.data.options["root"] == str(base / "pdata")
    assert inline.init == base / "w.safetensors" and inline.output == base / "pout"


def test_pretrain_file_paths_resolve_against_its_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "pre"
    cfg = load_config(write(folder, {"data": {"name": "pneumoniamnist", "root": "d"}, "init": "x.safetensors",
                                     "output": "o"}), PretrainConfig)
    assert cfg.data.options["root"] == str(folder.resolve() / "d")
    assert cfg.init == folder.resolve() / "x.safetensors" and cfg.output == folder.resolve() / "o"


def test_validate_without_base_keeps_relative_paths():
    cfg = validate_config({**BASE, "output": "out", "inits": [{"checkpoint": "c.safetensors"}]}, ExperimentConfig)
    assert cfg.output == Path("out") and cfg.inits[0].checkpoint == Path("c.safetensors")


# --- shorthands ---------------------------------------------------------------------------------------------------

def test_dataset_shorthand_keys_become_options():
    cfg = validate_config({**BASE, "datasets": [
        "synthetic2d",
        {"name": "synthetic2d", "size": 16, "n_train": 90, "resize": 32, "options": {"seed": 3}},
    ]}, ExperimentConfig)
    plain, custom = cfg.datasets
    assert plain == DatasetConfig(name="synthetic2d") and plain.options == {}
    assert custom.options == {"size": 16, "n_train": 90, "seed": 3}
    assert custom.resize == 32  # a field of the config, not a loader option


def test_strategy_shorthands():
    cfg = validate_config({**BASE, "strategies": [
        "q2", "linear", "end_to_end", {"name": "range", "range": "q1-q3"},
        {"name": "truncate", "keep": "0-0.75", "train": "q2"}, {"name": "truncate", "keep": "0-50%"},
    ]}, ExperimentConfig)
    q2, linear, e2e, span, truncate, half = cfg.strategies
    assert isinstance(q2, DepthRangeStrategy) and q2.range == "0.25-0.5" and q2.label() == "range 0.25-0.5"
    assert isinstance(linear, Linear) and isinstance(e2e, EndToEnd)
    assert span.range == "0-0.75"
    assert isinstance(truncate, Truncate) and truncate.keep == "0-0.75" and truncate.train == "0.25-0.5"
    assert truncate.label() == "truncate 0-0.75 train 0.25-0.5"
    assert half.keep == "0-0.5" and half.train is None


def test_truncate_keep_must_start_at_zero(tmp_path):
    message = error_of(tmp_path, {**BASE, "strategies": [{"name": "truncate", "keep": "0.25-0.75"}]})
    assert "keep" in message and "'0.25-0.75'" in message and "start at 0" in message
