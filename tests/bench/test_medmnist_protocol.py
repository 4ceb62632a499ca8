"""The MedMNIST v2 protocol as an experiment, and its comparison with the paper's table."""

import pandas as pd
import pytest

from medtransfer.bench.medmnist_protocol import (REFERENCE_DETAILS, comparison, format_comparison, format_details,
                                                 protocol_config, run_model)
from medtransfer.bench.store import ResultStore, config_hash
from medtransfer.errors import ConfigError


def test_2d_28_is_the_reference_loop_on_native_pixels_with_the_small_stem(tmp_path):
    cfg = protocol_config(["pneumoniamnist", "breastmnist"], tmp_path, seeds=[0, 1, 2])
    train = cfg.train
    assert (train.epochs, train.batch_size, train.optimizer, train.lr, train.weight_decay) == (100, 128, "adam",
                                                                                                1e-3, 0.0)
    assert (train.schedule, train.milestones, train.gamma, train.augment) == ("multistep", [0.5, 0.75], 0.1, "none")
    assert train.monitor in (None, "auc") and cfg.hardware.precision == "32-true"
    assert cfg.backbone.name == "resnet18" and cfg.backbone.small_stem
    assert [(d.name, d.options["size"], d.resize) for d in cfg.datasets] == [("pneumoniamnist", 28, None),
                                                                            ("breastmnist", 28, None)]
    assert [s.name for s in cfg.strategies] == ["end_to_end"] and cfg.label_fractions == [1.0]


def test_2d_224_upsamples_and_3d_uses_3d_convolutions_with_batch_32(tmp_path):
    big = protocol_config(["pneumoniamnist"], tmp_path, arch="resnet50", variant="224")
    assert big.backbone.name == "resnet50" and not big.backbone.small_stem and big.datasets[0].resize == 224
    assert big.datasets[0].resize_mode == "nearest"  # the reference's PIL NEAREST
    vol = protocol_config(["adrenalmnist3d"], tmp_path, volume_size=64, seeds=[0])
    assert vol.backbone.name == "resnet18_3d" and vol.backbone.small_stem and vol.train.batch_size == 32
    assert vol.datasets[0].options["size"] == 64 and vol.name == "medmnist-v2-resnet18-3d-64-100ep"


@pytest.mark.parametrize("kwargs, key", [
    ({"datasets": ["pneumoniamnist", "adrenalmnist3d"]}, "mix 2D and 3D"),
    ({"datasets": ["mnist"]}, "not a MedMNIST dataset"),
    ({"datasets": ["pneumoniamnist"], "variant": "64"}, "variant"),
    ({"datasets": ["pneumoniamnist"], "arch": "resnet34"}, "arch"),
    ({"datasets": ["adrenalmnist3d"], "volume_size": 128}, "volume_size"),
])
def test_bad_choices_are_refused_before_training(tmp_path, kwargs, key):
    with pytest.raises(ConfigError, match=key):
        protocol_config(root=tmp_path, **kwargs)


def _store(folder, runs):
    """Fake finished runs: (dataset, backbone, small_stem, resize, seed, auc, acc)."""
    store = ResultStore(folder)
    for dataset, backbone, small, resize, seed, auc, acc in runs:
        config = {"dataset": {"name": dataset, "resize": resize, "options": {"size": 28},
                              **({"resize_mode": "nearest"} if resize else {})},
                  "backbone": {"name": backbone, "small_stem": small}, "seed": seed, "train": {"epochs": 100}}
        store.start(config_hash(config), config, {"dataset": dataset, "init": "random", "strategy": "end_to_end",
                                                  "fraction": 1.0, "seed": seed})
        store.finish(config_hash(config), {"auc": auc, "acc": acc}, {}, {}, {"fit_s": 120.0},
                     extra={"best_epoch": 40 + seed, "epochs_run": 100})
    return store


def test_comparison_puts_mean_and_std_over_seeds_beside_the_paper(tmp_path):
    store = _store(tmp_path, [("pneumoniamnist", "resnet18", True, None, s, auc, acc)
                              for s, auc, acc in [(0, 0.94, 0.85), (1, 0.95, 0.86), (2, 0.96, 0.87)]]
                   + [("adrenalmnist3d", "resnet18_3d", True, None, 0, 0.80, 0.75),
                      ("bloodmnist", "resnet18", False, 224, 0, 0.99, 0.95)])
    table = comparison(store.rows()).set_index("dataset")
    pneu = table.loc["pneumoniamnist"]
    assert pneu["model"] == "ResNet-18 (28)" and pneu["n"] == 3 and pneu["seeds"] == [0, 1, 2]
    assert pneu["auc_mean"] == pytest.approx(0.95) and pneu["auc_std"] == pytest.approx(0.01)
    assert pneu["auc_diff"] == pytest.approx(0.95 - 0.944) and pneu["acc_diff"] == pytest.approx(0.86 - 0.854)
    adrenal = table.loc["adrenalmnist3d"]
    assert adrenal["model"] == "ResNet-18 + 3D" and adrenal["auc_paper"] == 0.827 and not adrenal["paper_verified"]
    assert table.loc["bloodmnist", "model"] == "ResNet-18 (224)" and pd.isna(table.loc["bloodmnist", "auc_paper"])
    text = format_comparison(comparison(store.rows()))
    assert "| 0.950 ± 0.010 | 0.944 | +0.006 |" in text and "0.827 †" in text and "Scientific Data 10:41" in text
    assert "not comparable" not in text  # every run here had the full 100 epochs
    assert pneu["fit_min_per_seed"] == pytest.approx(2.0) and pneu["s_per_epoch"] == pytest.approx(1.2)


def test_run_model_reads_the_paper_row_from_a_stored_config():
    config = {"dataset": {"name": "pathmnist", "resize": 224, "resize_mode": "nearest"},
              "backbone": {"name": "resnet50", "small_stem": False},
              "train": {"epochs": 3}}
    assert run_model(config) == ("pathmnist", "ResNet-50 (224)", 3)


def test_every_deviation_says_why():
    assert all(d.why for d in REFERENCE_DETAILS if not d.follows)
    text = format_details()
    assert text.count("| deviates |") == sum(not d.follows for d in REFERENCE_DETAILS) > 0


def _script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "medmnist_protocol.py"
    spec = importlib.util.spec_from_file_location("medmnist_protocol_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_table_is_rewritten_from_stored_results_without_training(tmp_path, capsys):
    script = _script()
    _store(tmp_path / "exp", [("pneumoniamnist", "resnet18", True, None, 0, 0.93, 0.84)])
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{script.START}\nold table\n{script.END}\noutro\n", encoding="utf-8")
    assert script.main(["--readme", str(readme), "--tables", str(tmp_path / "exp")]) == 0
    text = readme.read_text(encoding="utf-8")
    assert text.startswith(f"intro\n{script.START}\n| dataset |") and text.endswith(f"{script.END}\noutro\n")
    assert "old table" not in text and "| 0.930 | 0.944 | -0.014 |" in text and "| deviates |" in text
    assert script.main(["--readme", str(readme), "--tables", str(tmp_path / "none")]) == 2
    assert "error:" in capsys.readouterr().err and readme.read_text(encoding="utf-8") == text


def test_sigterm_during_training_exits_130_with_one_line(monkeypatch, capsys):
    """The protocol's runs last hours: a SIGTERM must reach the runner as ``Interrupted`` (which stores the run
    interrupted) rather than kill the process and leave the run claimed as running."""
    import os
    import signal
    import time

    script = _script()

    def terminated(args):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        raise AssertionError("SIGTERM did not interrupt the run")

    monkeypatch.setattr(script, "run", terminated)
    assert script.main(["--datasets", "pneumoniamnist"]) == 130
    err = capsys.readouterr().err
    assert "interrupted by SIGTERM" in err and "run the same command again" in err
    assert signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, signal.default_int_handler)


@pytest.mark.parametrize("dataset, backbone, label", [
    ({"name": "adrenalmnist3d", "options": {"size": 28}, "resize": None}, {"name": "resnet18_3d", "small_stem": True},
     "ResNet-18 + 3D"),
    ({"name": "adrenalmnist3d", "options": {"size": 64}, "resize": None}, {"name": "resnet18_3d", "small_stem": True},
     "ResNet-18 + 3D (64³)"),
    ({"name": "pneumoniamnist", "options": {"size": 224}, "resize": None}, {"name": "resnet18", "small_stem": False},
     "resnet18 (224 px, standard stem)"),
    ({"name": "pneumoniamnist", "options": {"size": 28}, "resize": 224}, {"name": "resnet18", "small_stem": False},
     "resnet18 (28 px resized to 224 (linear), standard stem)"),
])
def test_only_the_papers_inputs_get_the_papers_row(dataset, backbone, label):
    """MedMNIST+'s 64³ or 224 px files, or a bilinear upsampling, are not the paper's cells."""
    assert run_model({"dataset": dataset, "backbone": backbone, "train": {"epochs": 100}})[1] == label


def test_other_volume_sizes_are_neither_compared_with_the_paper_nor_pooled(tmp_path):
    rows = []
    for size, auc in ((28, 0.80), (64, 0.90)):
        for seed in (0, 1):
            config = {"dataset": {"name": "adrenalmnist3d", "options": {"size": size}, "resize": None},
                      "backbone": {"name": "resnet18_3d", "small_stem": True}, "seed": seed, "train": {"epochs": 100}}
            rows.append({"config": config, "seed": seed, "metric.auc": auc, "metric.acc": 0.7,
                         "timings": {"fit_s": 60.0}, "extra": {"epochs_run": 100, "best_epoch": 50}})
    table = comparison(pd.DataFrame(rows)).set_index("model")
    assert table.loc["ResNet-18 + 3D", "n"] == 2 and table.loc["ResNet-18 + 3D", "auc_mean"] == pytest.approx(0.80)
    assert table.loc["ResNet-18 + 3D", "auc_paper"] == 0.827
    assert table.loc["ResNet-18 + 3D (64³)", "n"] == 2 and pd.isna(table.loc["ResNet-18 + 3D (64³)", "auc_paper"])
