"""Experiments sharing one store are kept apart (config keys), and stored run warnings reach tables and reports."""

import itertools
import re

import pytest

from medtransfer.bench.store import ResultStore, config_hash
from medtransfer.errors import ConfigError
from medtransfer.report import report_folder
from medtransfer.report.comparisons import comparison_table
from medtransfer.report.integrity import (check_one_experiment, config_table, differing_settings, format_warnings,
                                          select_config, warning_table)
from medtransfer.report.tables import format_table, summary_table

WARNING = "val auc undefined in every epoch: the validation split has one class ('healthy')"


def write_store(folder, experiments=((15, (0, 1)), (30, (0, 1))), warned=("simclr", 30, 1)):
    """Two experiments differing only in epochs (the second 0.1 better), each init x seeds, one strategy."""
    store = ResultStore(folder)
    for (epochs, seeds), init in itertools.product(experiments, ("random", "simclr")):
        for seed in seeds:
            config = {"dataset": {"name": "toy"}, "init": {"kind": init}, "strategy": {"name": "end_to_end"},
                      "fraction": 0.1, "seed": seed, "train": {"epochs": epochs, "monitor": "auc"}}
            run_id = config_hash(config)
            store.start(run_id, config, {"dataset": "toy", "init": init, "strategy": "end_to_end", "fraction": 0.1,
                                         "seed": seed})
            auc = 0.6 + 0.1 * (epochs == 30) + 0.05 * (init == "simclr") + 0.01 * seed
            store.finish(run_id, {"auc": auc}, {}, {}, {"fit_s": 1.0, "test_s": 0.1},
                         extra={"warnings": [WARNING] if (init, epochs, seed) == warned else []})
    return store


@pytest.fixture
def two(tmp_path):
    return write_store(tmp_path).rows(status=None)


def test_the_settings_that_differ_inside_a_cell_tell_experiments_apart(two, tmp_path):
    assert differing_settings(two) == ["train.epochs"]
    one = two[two["config"].map(lambda c: c["train"]["epochs"] == 15)]
    assert differing_settings(one) == [] and config_table(one) is None  # seeds differ, but seeds are not configs
    configs = config_table(two)
    keys = dict(zip(two["config"].map(lambda c: c["train"]["epochs"]), configs["config_key"]))
    assert len(set(keys.values())) == 2 and all(len(k) == 6 for k in keys.values())
    assert (configs.groupby("config_key")["config_differs"].unique().map(list).to_dict()
            == {keys[15]: ["train.epochs=15"], keys[30]: ["train.epochs=30"]})


def test_experiments_with_disjoint_seeds_are_still_kept_apart(tmp_path):
    rows = write_store(tmp_path, experiments=((15, (0, 1)), (30, (2, 3)))).rows()
    with pytest.raises(ConfigError, match=r"mixes experiments: its runs differ in config keys train\.epochs, which "
                                          r"one experiment holds fixed \(config \w{6}: train\.epochs=\d+; \w{6}: "
                                          r"train\.epochs=\d+\).*--config"):
        check_one_experiment(rows)
    summary = summary_table(rows, "auc")
    assert summary["n"].tolist() == [2, 2, 2, 2]


def test_summary_keeps_configs_apart_and_the_table_prints_their_legend(two):
    summary = summary_table(two, "auc")
    assert len(summary) == 4 and summary["n"].tolist() == [2] * 4  # never n=4 from two experiments
    key30 = config_table(two).loc[two["config"].map(lambda c: c["train"]["epochs"] == 30).idxmax(), "config_key"]
    simclr30 = summary[(summary["init"] == "simclr") & (summary["config_key"] == key30)].iloc[0]
    assert simclr30["mean"] == pytest.approx(0.755) and simclr30["warned"] == 1
    text = format_table(summary, "auc")
    lines = text.splitlines()
    assert lines[1].split() == ["dataset", "init", "strategy", "config", "10%"]
    assert re.search(rf"toy\s+simclr\s+end_to_end\s+{key30}\s+0\.755 ± 0\.007 \(n=2, 1 warned\)\*", text)
    assert re.fullmatch(r"config \w{6}: train\.epochs=\d+; \w{6}: train\.epochs=\d+", lines[-1])
    assert "n=4" not in text


def test_select_config_keeps_one_experiment(two):
    key = config_table(two)["config_key"].iloc[0]
    chosen = select_config(two, key)
    assert len(chosen) == 4 and differing_settings(chosen) == []
    with pytest.raises(ConfigError, match=r"--config: 'nope' is not a config key of these runs; allowed: \w{6}, "):
        select_config(two, "nope")
    with pytest.raises(ConfigError, match="allowed: none"):
        select_config(chosen, key)


def test_stored_warnings_are_listed_per_run(two):
    table = warning_table(two)
    assert table[["init", "seed", "warning"]].values.tolist() == [["simclr", 1, WARNING]]
    assert format_warnings(two).splitlines() == [
        "1 run(s) finished with warnings (their numbers may not mean what they seem):",
        f"  toy | simclr | end_to_end | 10% | seed 1: {WARNING}"]
    assert format_warnings(two[two["init"] == "random"]) == ""


def test_report_refuses_a_mix_and_reports_one_config_with_its_warnings(tmp_path, two):
    with pytest.raises(ConfigError, match="mixes experiments.*--config KEY"):
        report_folder(tmp_path, tmp_path / "mixed")
    configs = config_table(two)
    key30 = configs["config_key"][two["config"].map(lambda c: c["train"]["epochs"] == 30)].iloc[0]
    html = report_folder(tmp_path, tmp_path / "r30", config=key30).read_text(encoding="utf-8")
    assert '<section id="warnings">' in html and WARNING.replace("'", "&#x27;") in html
    assert "1 finished run(s) stored warnings" in html
    assert re.search(r"0\.755 ± 0\.007 \[[-0-9.]+, [0-9.]+\] \(n=2, 1 warned\)", html)  # the summary cell
    other = configs["config_key"][configs["config_key"] != key30].iloc[0]
    html = report_folder(tmp_path, tmp_path / "r15", config=other).read_text(encoding="utf-8")
    assert "None: no finished run stored a warning." in html


def write_two_backbones(folder, same_backbone=False):
    """Two experiments, one per backbone, each with its own SimCLR pre-training (its own hash) and a random init."""
    store = ResultStore(folder)
    for backbone, init, seed in itertools.product(("resnet18", "convnext_atto"), ("random", "simclr"), (0, 1)):
        if same_backbone and init == "random" and backbone != "resnet18":
            continue  # the same random runs: stored once
        sha = None if init == "random" else f"sha-of-simclr-on-{backbone}"
        config = {"dataset": {"name": "toy"}, "backbone": {"name": "resnet18" if same_backbone else backbone},
                  "init": {"kind": init, "sha256": sha}, "strategy": {"name": "linear"}, "fraction": 0.1,
                  "seed": seed}
        run_id = config_hash(config)
        store.start(run_id, config, {"dataset": "toy", "init": init, "strategy": "linear", "fraction": 0.1,
                                     "seed": seed})
        store.finish(run_id, {"auc": 0.7 + 0.1 * (init == "simclr")}, {}, {}, {"fit_s": 1.0, "test_s": 0.1})
    return store.rows(status=None)


def test_an_init_hash_that_another_setting_explains_does_not_split_an_experiment(tmp_path):
    """Each backbone's SimCLR has its own hash: the backbone tells the experiments apart, and each experiment's random
    and SimCLR runs share one config key, so `--config` keeps an init with its baseline."""
    rows = write_two_backbones(tmp_path)
    assert differing_settings(rows) == ["backbone.name"]
    configs = config_table(rows)
    assert configs.groupby("config_key").size().tolist() == [4, 4]
    chosen = select_config(rows, configs["config_key"].iloc[0])
    assert sorted(chosen["init"].unique()) == ["random", "simclr"] and differing_settings(chosen) == []


def test_a_changed_init_file_alone_still_tells_experiments_apart(tmp_path):
    rows = write_two_backbones(tmp_path, same_backbone=True)  # same backbone, two SimCLR hashes: a changed file
    assert differing_settings(rows) == ["init.sha256"]


def write_disjoint_cells(folder):
    """Two experiment files into one folder, no cell shared: random init at 15 epochs, SimCLR at 30 (the better)."""
    store = ResultStore(folder)
    for (init, epochs), seed in itertools.product((("random", 15), ("simclr", 30)), (0, 1, 2)):
        config = {"dataset": {"name": "toy"}, "init": {"kind": init, "sha256": None if init == "random" else "ab12"},
                  "strategy": {"name": "end_to_end"}, "fraction": 0.1, "seed": seed,
                  "train": {"epochs": epochs, "monitor": "auc"}}
        run_id = config_hash(config)
        store.start(run_id, config, {"dataset": "toy", "init": init, "strategy": "end_to_end", "fraction": 0.1,
                                     "seed": seed})
        store.finish(run_id, {"auc": 0.7 + 0.1 * (init == "simclr") + 0.01 * seed}, {}, {},
                     {"fit_s": 1.0, "test_s": 0.1})
    return store.rows(status=None)


def test_experiments_whose_cells_do_not_overlap_are_refused_or_keyed_not_compared(tmp_path):
    rows = write_disjoint_cells(tmp_path)
    assert differing_settings(rows) == ["train.epochs"]
    with pytest.raises(ConfigError, match=r"mixes experiments: its runs differ in config keys train\.epochs"):
        comparison_table(rows, "auc")
    summary = summary_table(rows, "auc")
    configs = config_table(rows)
    assert summary.groupby("init")["config_key"].unique().map(list).to_dict() == {
        init: [configs["config_key"][rows["init"] == init].iloc[0]] for init in ("random", "simclr")}
    assert sorted(select_config(rows, configs["config_key"].iloc[0])["init"].unique()) == [rows["init"].iloc[0]]


def test_settings_of_the_grid_axes_may_differ_between_cells(tmp_path):
    """One experiment: each dataset its own options, monitor and pre-training, each strategy its own settings."""
    store = ResultStore(tmp_path)
    for dataset, init, strategy, seed in itertools.product(("toy", "seg"), ("random", "simclr"), ("linear", "knn"),
                                                           (0, 1)):
        config = {"dataset": {"name": dataset, "options": {"size": 28 if dataset == "toy" else 64}},
                  "init": {"kind": init, "sha256": None if init == "random" else f"simclr-on-{dataset}"},
                  "strategy": {"name": strategy, **({"k": 20} if strategy == "knn" else {})}, "fraction": 0.1,
                  "seed": seed, "train": {"epochs": 5, "monitor": "dice" if dataset == "seg" else "auc",
                                          **({"last_batch": "kept"} if strategy == "linear" else {})}}
        run_id = config_hash(config)
        store.start(run_id, config, {"dataset": dataset, "init": init, "strategy": strategy, "fraction": 0.1,
                                     "seed": seed})
        store.finish(run_id, {"auc": 0.7}, {}, {}, {"fit_s": 1.0, "test_s": 0.1})
    rows = store.rows(status=None)
    assert differing_settings(rows) == [] and config_table(rows) is None
    check_one_experiment(rows)
