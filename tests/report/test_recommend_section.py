"""report/recommend.py: the report shows the recommender's predicted vs measured ranks, tau and regret (and the
baselines' regret) when the experiment folder holds recommendations.csv, and nothing without it.

Measured means of the toy experiment (toy_experiment.py) for simclr at 10 % labels: range 0.25-0.5 0.8200,
truncate 0-0.75 0.8033, end_to_end 0.7967, linear 0.7050 (seed 2 failed).
"""

import pandas as pd
import pytest
from toy_experiment import write_experiment

from medtransfer.bench.store import ResultStore
from medtransfer.errors import ConfigError
from medtransfer.report import analyse, report_folder
from medtransfer.report.recommend import recommend_section, section_html

Q2 = "range 0.25-0.5"
SCORES = {"end_to_end": 4.0, Q2: 3.0, "truncate 0-0.75": 2.0, "linear": 1.0, "range 0.75-1": 9.0}  # q4: not run


def write_recommendations(folder, scores=SCORES):
    frame = pd.DataFrame([{"dataset": "toy", "init": "simclr", "fraction": 0.1, "strategy": s, "score": v,
                           "rank": r, "probe": 0.5, "rgn": float("nan"), "shift": 0.1, "cost_s": 3.0,
                           "grid_cost_s": 90.0}
                          for r, (s, v) in enumerate(sorted(scores.items(), key=lambda kv: -kv[1]), start=1)])
    frame.to_csv(folder / "recommendations.csv", index=False)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("recommended")
    write_experiment(folder)
    return folder


def test_no_recommendations_no_section(experiment):
    folder, rows = experiment
    assert analyse(rows, runs_folder=folder).recommendation is None


def test_report_shows_predicted_vs_measured_rank_tau_and_regrets(folder, tmp_path):
    write_recommendations(folder)
    html = report_folder(folder, tmp_path).read_text(encoding="utf-8")
    assert 'id="recommend"' in html and "Recommended vs measured strategy ranking (auc)" in html
    assert 'class="recommend-cells"' in html and 'class="recommend-ranks"' in html
    cells = pd.read_csv(tmp_path / "recommendation_scores.csv")
    assert len(cells) == 1  # one (dataset, init, fraction) ranked
    cell = cells.iloc[0]
    assert (cell["pick"], cell["best"], cell["n_strategies"], cell["n_seeds"]) == ("end_to_end", Q2, 4, 2)
    assert cell["tau"] == pytest.approx(1 / 3)  # 4 concordant, 2 discordant pairs (e2e above q2 and truncate)
    assert cell["regret"] == pytest.approx(0.82 - (0.78 + 0.05 / 3))  # e2e: 0.78 + wobble 0.03, 0, 0.02
    assert cell["regret (always end-to-end)"] == pytest.approx(cell["regret"])
    assert cell["family"] == "none"  # no checkpoint in the folder: the rule takes simclr as not pre-trained
    ranks = pd.read_csv(tmp_path / "recommendation_ranks.csv")
    assert ranks["strategy"].tolist() == ["end_to_end", Q2, "truncate 0-0.75", "linear"]
    assert ranks["measured_rank"].tolist() == [3, 1, 2, 4]


def test_given_families_drive_the_study_rule(folder):
    write_recommendations(folder)
    rows = ResultStore(folder).rows(status=None)
    cell = recommend_section(rows, folder, "auc", {"simclr": "contrastive"}).cells.iloc[0]
    assert (cell["pick (study rule)"], cell["regret (study rule)"], cell["family"]) == (Q2, 0.0, "contrastive")


def test_a_broken_recommendations_file_is_named(folder):
    (folder / "recommendations.csv").write_text("dataset,init\ntoy,simclr\n")
    rows = pd.DataFrame({"dataset": ["toy"], "init": ["simclr"], "strategy": ["linear"], "fraction": [0.1],
                         "seed": [0], "metric.auc": [0.7]})
    with pytest.raises(ConfigError, match=r"recommendations.csv: recommendations: columns fraction, strategy, score"):
        recommend_section(rows, folder, "auc")


def test_recommendations_for_cells_the_grid_has_not_run_say_so(tmp_path):
    write_experiment(tmp_path)
    pd.DataFrame({"dataset": ["toy"], "init": ["random"], "fraction": [0.5], "strategy": ["linear"],
                  "score": [1.0], "rank": [1]}).to_csv(tmp_path / "recommendations.csv", index=False)
    section = recommend_section(ResultStore(tmp_path).rows(status=None), tmp_path, "auc")
    assert section.cells.empty and "nothing to compare" in section_html(section, "auc")
