import math

import numpy as np
import pandas as pd
import pytest

from medtransfer.errors import ConfigError
from medtransfer.report.tables import format_table, summary_table


def _rows():
    """Hand-built ResultStore.rows(): (dataset, init, strategy, fraction, [auc per seed])."""
    runs = [
        ("pneumonia", "imagenet", "linear", 0.1, [0.90, 0.92, 0.94]),
        ("pneumonia", "imagenet", "full", 0.1, [0.95, 0.97]),
        ("pneumonia", "imagenet", "linear", 1.0, [0.96]),
        ("pneumonia", "imagenet", "full", 1.0, [0.99, np.nan]),  # a NaN AUC does not count as a seed
        ("pneumonia", "ssl", "full", 1.0, [0.98, 0.96]),
        ("breast", "imagenet", "full", 0.1, [0.5, 1.0]),
        ("breast", "ssl", "full", 0.1, [0.625, 0.875]),  # ties breast/imagenet/full at 0.75
    ]
    records = [
        {"dataset": d, "init": i, "strategy": s, "fraction": f, "seed": seed, "metric.auc": auc, "metric.mae": 1 - auc}
        for d, i, s, f, values in runs
        for seed, auc in enumerate(values)
    ]
    return pd.DataFrame(records)


def test_summary_table_aggregates_seeds():
    summary = summary_table(_rows(), "auc")
    assert list(summary.columns) == ["dataset", "init", "strategy", "fraction", "mean", "std", "n"]
    got = {tuple(r[:4]): r[4:] for r in summary.itertuples(index=False, name=None)}
    assert len(got) == 7
    mean, std, n = got[("pneumonia", "imagenet", "linear", 0.1)]
    assert (mean, std, n) == (pytest.approx(0.92), pytest.approx(0.02), 3)
    mean, std, n = got[("breast", "imagenet", "full", 0.1)]
    assert (mean, std, n) == (0.75, pytest.approx(math.sqrt(0.125)), 2)
    mean, std, n = got[("pneumonia", "imagenet", "linear", 1.0)]
    assert mean == 0.96 and math.isnan(std) and n == 1
    mean, std, n = got[("pneumonia", "imagenet", "full", 1.0)]
    assert mean == 0.99 and math.isnan(std) and n == 1


def test_summary_table_custom_grouping():
    summary = summary_table(_rows(), "auc", by=("dataset",))
    assert summary["dataset"].tolist() == ["breast", "pneumonia"]
    assert summary["n"].tolist() == [4, 9]
    pneumonia = [0.90, 0.92, 0.94, 0.95, 0.97, 0.96, 0.99, 0.98, 0.96]
    assert summary["mean"].tolist() == [0.75, pytest.approx(sum(pneumonia) / 9)]


def test_summary_table_rejects_unknown_metric_and_column():
    with pytest.raises(ConfigError, match="'kappa'.*present: auc, mae"):
        summary_table(_rows(), "kappa")
    with pytest.raises(ConfigError, match="cannot group by lr"):
        summary_table(_rows(), "auc", by=("dataset", "lr"))


def test_format_table_exact_text():
    text = format_table(summary_table(_rows(), "auc"), "auc")
    assert text.splitlines() == [
        "auc: mean ± std over seeds (n seeds); * best per dataset and label fraction",
        "dataset    init      strategy  10%                   100%",
        "breast     imagenet  full      0.750 ± 0.354 (n=2)*  -",
        "breast     ssl       full      0.750 ± 0.177 (n=2)*  -",
        "pneumonia  imagenet  full      0.960 ± 0.014 (n=2)*  0.990 (n=1)*",
        "pneumonia  imagenet  linear    0.920 ± 0.020 (n=3)   0.960 (n=1)",
        "pneumonia  ssl       full      -                     0.970 ± 0.014 (n=2)",
    ]


def test_format_table_marks_lowest_error_and_uses_digits():
    rows = _rows()
    rows = rows[(rows["dataset"] == "pneumonia") & (rows["fraction"] == 0.1)].assign(fraction=0.01)
    text = format_table(summary_table(rows, "mae"), "mae", digits=2)
    assert text.splitlines()[1:] == [
        "dataset    init      strategy  1%",
        "pneumonia  imagenet  full      0.04 ± 0.01 (n=2)*",
        "pneumonia  imagenet  linear    0.08 ± 0.02 (n=3)",
    ]


def test_format_table_needs_a_summary():
    with pytest.raises(ValueError, match="lacks columns strategy, fraction"):
        format_table(summary_table(_rows(), "auc", by=("dataset", "init")), "auc")
