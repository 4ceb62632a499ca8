"""What the figures draw: depth-heatmap data parsed from stored strategy configs, rare classes, training logs."""

import numpy as np
import pytest
from toy_experiment import SEEDS, auc_value
from matplotlib.figure import Figure

from medtransfer.report import plots
from medtransfer.report.tables import summary_with_ci


def test_depth_table_reads_strategy_configs(experiment):
    _, rows = experiment
    table = plots.depth_table(rows, "auc")
    part = table[(table["fraction"] == 1.0) & (table["init"] == "random")]
    # linear probe first, ranges shallow to deep, end-to-end last; truncation is not a depth range
    assert part["depth"].tolist() == ["none (linear probe)", "0.25-0.5", "0-1 (end-to-end)"]
    assert part[["start", "end"]].values.tolist() == [[1.0, 1.0], [0.25, 0.5], [0.0, 1.0]]
    q2 = part[part["depth"] == "0.25-0.5"].iloc[0]
    assert q2["mean"] == pytest.approx(np.mean([auc_value("random", "range 0.25-0.5", 1.0, s) for s in SEEDS]))
    assert q2["n"] == 3
    assert isinstance(plots.depth_heatmap(table, "auc"), Figure)


def test_per_class_table_marks_the_rare_class(experiment):
    _, rows = experiment
    key = plots.per_class_key(rows, "auc")
    table = plots.per_class_table(rows, key)
    assert key == "auc"
    classes = table.drop_duplicates("class").set_index("class")
    # prevalence from the largest fraction's class counts: 45/100, 45/100, 10/100; rare below 0.5 x 1/3
    assert classes["prevalence"].tolist() == pytest.approx([0.45, 0.45, 0.10])
    assert classes["rare"].tolist() == [False, False, True]
    assert classes["name"].tolist() == ["normal", "benign", "malignant"]  # the runner stores the names with each run
    cell = table[(table["init"] == "simclr") & (table["strategy"] == "linear") & (table["fraction"] == 0.1)]
    assert cell["n"].tolist() == [2, 2, 2]  # the failed seed is not counted
    assert isinstance(plots.per_class_bars(table, key, "end_to_end"), Figure)


def test_binary_tasks_have_no_per_class_bars(experiment):
    _, rows = experiment
    binary = rows.assign(per_class=[{"auc": [0.8, 0.8]} for _ in range(len(rows))])
    assert plots.per_class_table(binary, "auc").empty


def test_training_log_from_run_folders(experiment):
    folder, rows = experiment
    log = plots.training_log(rows, folder, "end_to_end")
    assert len(log) == 2 * 2 * 3 * 3  # inits x fractions x seeds x epochs
    run = log[(log["init"] == "simclr") & (log["fraction"] == 1.0) & (log["seed"] == 1)]
    assert run["train/loss"].tolist() == [1.0, 0.6, 0.4]
    assert run["val/auc"].tolist()[-1] == pytest.approx(auc_value("simclr", "end_to_end", 1.0, 1))
    assert isinstance(plots.training_curves(log, "auc"), Figure)


def test_label_efficiency_draws_one_line_per_init_and_strategy(experiment):
    _, rows = experiment
    fig = plots.label_efficiency(summary_with_ci(rows, ["auc"]), "auc")
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 4 and all(len(ax.collections) == 2 for ax in visible)  # one CI band per init
