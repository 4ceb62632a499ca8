"""The report's imbalance parts: per-class gains paired by seed with the rare class marked, the gain-vs-prevalence
figure and the init x ratio heatmap, from runs written through the real ResultStore with values known in advance."""

import itertools

import numpy as np
import pandas as pd
import pytest

from medtransfer.bench.store import ResultStore, config_hash
from medtransfer.report import analyse, build_report
from medtransfer.report.imbalance import class_gains, ratio_table

RATIOS = {None: [300, 100], 10: [300, 30], 50: [300, 6]}  # training counts (majority, rare) per ratio
SEEDS = (0, 1, 2)


def ap_value(init: str, ratio, seed: int, c: int) -> float:
    """Per-class AP: the rare class (1) falls with the ratio; simclr adds 0.05 to it, 0.01 to the majority."""
    rare_drop = {None: 0.0, 10: 0.2, 50: 0.4}[ratio]
    base = 0.9 - (rare_drop + 0.1) * c + 0.01 * seed
    return base + (init == "simclr") * (0.05 if c == 1 else 0.01) + 0.002 * seed * (init == "simclr")


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    store = ResultStore(tmp_path_factory.mktemp("imbalanced"))
    for init, ratio, seed in itertools.product(("random", "simclr"), RATIOS, SEEDS):
        dataset = "toy" if ratio is None else f"toy @ {ratio}:1"
        labels = {"dataset": dataset, "init": init, "strategy": "linear", "fraction": 1.0, "seed": seed}
        config = {"dataset": {"name": "toy"}, "init": {"kind": init}, "strategy": {"name": "linear"}, "seed": seed,
                  **({"imbalance": {"ratio": ratio, "mode": "subsample", "rare_class": None}} if ratio else {})}
        run_id = config_hash(config)
        store.start(run_id, config, labels)
        counts = RATIOS[ratio]
        ap = [ap_value(init, ratio, seed, c) for c in (0, 1)]
        record = {"mode": ratio and "subsample", "ratio": ratio, "rare_class": 1, "rare_named": False,
                  "natural_ratio": 3.0, "achieved_ratio": counts[0] / counts[1], "per_class": counts}
        store.finish(run_id, {"auc": ap[1], "rare_ap": ap[1]}, {"ap": ap, "recall": [0.9, 0.5]}, {"auc": ap[1]},
                     {"fit_s": 1.0, "test_s": 0.1},
                     extra={"class_counts": {"n": sum(counts), "per_class": counts}, "n_train": sum(counts),
                            "class_names": ["pneumonia", "normal"], "imbalance": record})
    return store.rows(status=None)


def test_class_gains_are_paired_by_seed_with_prevalence_and_the_rare_class(rows):
    gains = class_gains(rows, "random").set_index(["dataset", "class", "init"])
    rare_50 = gains.loc[("toy @ 50:1", 1, "simclr")]
    expected = np.mean([ap_value("simclr", 50, s, 1) - ap_value("random", 50, s, 1) for s in SEEDS])
    assert rare_50["gain"] == pytest.approx(expected) and rare_50["n_pairs"] == 3
    assert rare_50["prevalence"] == pytest.approx(6 / 306) and rare_50["rare"] and rare_50["name"] == "normal"
    assert gains.loc[("toy @ 50:1", 0, "simclr"), "gain"] == pytest.approx(0.01 + 0.002)
    assert not gains.loc[("toy @ 50:1", 0, "simclr"), "rare"]
    assert np.isnan(gains.loc[("toy", 1, "random"), "gain"])  # the baseline has no gain over itself
    assert gains.loc[("toy", 1, "random"), "mean"] == pytest.approx(np.mean([ap_value("random", None, s, 1)
                                                                             for s in SEEDS]))


def test_ratio_table_orders_natural_first_and_splits_the_dataset(rows):
    table = ratio_table(rows, "auc")
    assert table["ratio"].drop_duplicates().tolist() == ["natural", "10:1", "50:1"]
    assert set(table["dataset"]) == {"toy"} and (table["n"] == 3).all()
    cell = table[(table["ratio"] == "50:1") & (table["init"] == "random")]["mean"].item()
    assert cell == pytest.approx(np.mean([ap_value("random", 50, s, 1) for s in SEEDS]))


def test_report_shows_gains_heatmap_and_marks_rare_classes(rows, tmp_path):
    analysis = analyse(rows, baseline="random")  # runs at different ratios are different cells: no mixing error
    names = [name for name, _, _ in analysis.figures]
    assert "gain-vs-prevalence" in names and "imbalance-heatmap" in names
    html = build_report(rows, tmp_path, baseline="random").read_text(encoding="utf-8")
    assert 'id="fig-gain-vs-prevalence"' in html and "normal (rare)" in html
    table = (tmp_path / "per_class.md").read_text(encoding="utf-8")
    assert "| toy       | 50:1    |" in table and "normal (rare)" in table
    assert len(pd.read_csv(tmp_path / "per_class.csv")) == 3 * 2 * 2  # ratios x classes x inits


def test_runs_under_different_policies_are_never_pooled(rows):
    """A grid axis stored as a column (the training policy) splits every cell: each policy gets its own gains."""
    doubled = pd.concat([rows.assign(policy="none"), rows.assign(policy="mixup")], ignore_index=True)
    mixup = doubled["policy"] == "mixup"
    doubled.loc[mixup, "per_class"] = [{"ap": [v + 0.1 for v in pc["ap"]]} for pc in doubled.loc[mixup, "per_class"]]
    gains = class_gains(doubled, "random").set_index(["dataset", "policy", "class", "init"])
    assert len(gains) == 2 * len(class_gains(rows, "random"))
    assert gains.loc[("toy", "mixup", 1, "random"), "mean"] == pytest.approx(
        gains.loc[("toy", "none", 1, "random"), "mean"] + 0.1)
    assert len(ratio_table(doubled, "auc")) == 2 * len(ratio_table(rows, "auc"))
