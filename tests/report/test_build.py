"""The report as files: HTML with every section and figure, tables beside it, and the ``report`` command."""

import re

import pandas as pd
import pytest
from toy_experiment import write_experiment

from medtransfer.cli import main
from medtransfer.errors import MedtransferError
from medtransfer.report import analyse, build_report, report_folder

FILES = ("report.html", "summary.csv", "summary.md", "summary.tex", "comparisons.csv", "comparisons.md",
         "comparisons.tex", "missing_runs.csv", "per_class.csv", "per_class.md", "label-efficiency.png", "depth-heatmap.png", "per-class.png",
         "training-curves.png")


@pytest.fixture(scope="module")
def report(experiment, tmp_path_factory):
    folder, _ = experiment
    return report_folder(folder, tmp_path_factory.mktemp("report"))


def test_report_files_and_sections(report, experiment):
    folder, rows = experiment
    out = report.parent
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    html = report.read_text(encoding="utf-8")
    assert len(re.findall(r'<img alt="[^"]+" src="data:image/png;base64,', html)) == 4
    assert 'class="summary" data-metric="auc"' in html and 'class="summary" data-metric="acc"' in html
    assert 'class="comparisons"' in html and "Holm-corrected over the 14 comparisons" in html
    assert html.count("<details>") == len(rows) + 1  # every run's exact config, and the other metrics
    assert "RuntimeError: out of memory" in html and "1 of 48 runs are missing for auc (failed: 1)" in html
    assert rows["hostname"].iloc[0] in html
    assert "fit 1 min 34 s + test 23.5 s over 47 finished runs" in html  # 47 x (2.0 + 0.5) s
    assert not re.search(r'(src|href)="(https?:)?//', html)  # self-contained: nothing fetched
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 32 and {"ci_low", "ci_high", "n", "n_expected", "best", "short"} <= set(summary.columns)
    assert pd.read_csv(out / "missing_runs.csv")["status"].tolist() == ["failed"]


def test_single_seed_report_says_why_there_is_no_test(tmp_path):
    rows = write_experiment(tmp_path / "one", seeds=(0,), failed=None).rows(status=None)
    analysis = analyse(rows)
    assert analysis.comparisons["p"].isna().all() and (analysis.comparisons["marker"] == "").all()
    assert any("single finished seed: no statistical test is run" in n for n in analysis.notes)
    html = build_report(rows, tmp_path / "out").read_text(encoding="utf-8")
    assert "single finished seed" in html and "1 seed pair(s): no test" in html


def test_python_api_without_run_folder_omits_training_curves(experiment):
    _, rows = experiment
    analysis = analyse(rows, metric="acc", baseline="simclr")
    assert [name for name, _, _ in analysis.figures] == ["label-efficiency", "depth-heatmap", "per-class"]
    assert any("no training curves" in n for n in analysis.notes)
    assert set(analysis.comparisons["init"]) == {"random"}
    with pytest.raises(MedtransferError, match="'f1' is not in these results; allowed: acc, auc"):
        analyse(rows, metric="f1")


def test_cli_report_prints_the_path(experiment, tmp_path, capsys):
    folder, _ = experiment
    assert main(["report", str(folder), "--output", str(tmp_path / "r"), "--baseline", "random/linear"]) == 0
    out = capsys.readouterr().out
    assert out.strip() == f"report: {(tmp_path / 'r' / 'report.html').resolve()}"
    assert "Comparisons against random/linear" in (tmp_path / "r" / "report.html").read_text(encoding="utf-8")


def test_cli_report_errors(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no results.sqlite here" in capsys.readouterr().err
    write_experiment(tmp_path / "empty", seeds=())
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "no finished run to report on yet" in capsys.readouterr().err


def test_report_from_a_hand_made_frame(tmp_path):
    """A notebook user's DataFrame with only the label and metric columns is enough for a report."""
    rows = pd.DataFrame({"dataset": "d", "init": ["random"] * 3 + ["ssl"] * 3, "strategy": "end_to_end",
                         "fraction": 1.0, "seed": [0, 1, 2] * 2, "metric.auc": [0.70, 0.72, 0.75, 0.80, 0.79, 0.85]})
    html = build_report(rows, tmp_path).read_text(encoding="utf-8")
    assert html.count("<img ") == 1 and "no depth heatmap" in html and "no training curves" in html
    assert "ssl" in pd.read_csv(tmp_path / "comparisons.csv")["init"].tolist()
