"""evaluate/ranking.py: Kendall's tau-b, regret and pick-is-best of a predicted strategy ranking against measured
means, for the recommender and the two baselines, on hand-made frames with hand-computed answers."""

import json
import math

import pandas as pd
import pytest

from medtransfer.config import ExperimentConfig
from medtransfer.config_files import validate_config
from medtransfer.errors import ConfigError
from medtransfer.evaluate import ranking
from medtransfer.finetune.strategies import parse_strategy

Q2, Q3, Q4 = "range 0.25-0.5", "range 0.5-0.75", "range 0.75-1"


def runs(values: dict, init="simclr", metric="auc", dataset="toy", fraction=0.1) -> pd.DataFrame:
    """Finished runs: {strategy: [value per seed]}."""
    return pd.DataFrame([{"dataset": dataset, "init": init, "strategy": strategy, "fraction": fraction,
                          "seed": seed, f"metric.{metric}": value}
                         for strategy, seeds in values.items() for seed, value in enumerate(seeds)])


def recommended(scores: dict, init="simclr", dataset="toy", fraction=0.1) -> pd.DataFrame:
    return pd.DataFrame([{"dataset": dataset, "init": init, "fraction": fraction, "strategy": s, "score": v}
                         for s, v in scores.items()])


MEASURED = {"end_to_end": [0.80, 0.84], "linear": [0.70, 0.72], Q2: [0.86, 0.88], Q3: [0.75, 0.77],
            "truncate 0-0.75": [0.95, 0.95]}  # means 0.82, 0.71, 0.87, 0.76, 0.95 (the last is never ranked)
SCORES = {Q3: 3.0, Q2: 2.0, "end_to_end": 2.0, "linear": 1.0, Q4: 5.0}  # q4 ranked first but never run


def test_tau_b_and_regret_by_hand_with_ties_and_strategies_on_one_side_only():
    table = ranking.ranked_vs_measured(ranking.measured_means(runs(MEASURED), "auc"), recommended(SCORES), "auc")
    assert list(table["strategy"]) == [Q3, "end_to_end", Q2, "linear"]  # q4 (not run) and truncate (not ranked) out
    assert list(table["predicted_rank"]) == [1, 2, 2, 4]
    assert dict(zip(table["strategy"], table["measured_rank"])) == {Q2: 1, "end_to_end": 2, Q3: 3, "linear": 4}
    cell = ranking.cell_scores(table, "auc").iloc[0]
    # pairs (score, mean): concordant q3-linear, q2-linear, e2e-linear; discordant q3-q2, q3-e2e; q2-e2e tied in
    # score: tau_b = (3 - 2) / sqrt((6 - 1) * (6 - 0))
    assert cell["tau"] == pytest.approx(1 / math.sqrt(30))
    assert (cell["pick"], cell["best"], cell["n_strategies"], cell["n_seeds"]) == (Q3, Q2, 4, 2)
    assert cell["regret"] == pytest.approx(0.87 - 0.76) and cell["pick_is_best"] == 0.0


def test_lower_is_better_metric_flips_best_regret_and_tau():
    losses = {"end_to_end": [0.3, 0.3], "linear": [0.5, 0.5], Q2: [0.1, 0.3]}
    scores = {"end_to_end": 2.0, "linear": 1.0, Q2: 0.0}
    table = ranking.ranked_vs_measured(ranking.measured_means(runs(losses, metric="loss"), "loss"),
                                       recommended(scores), "loss")
    assert dict(zip(table["strategy"], table["measured_rank"])) == {Q2: 1, "end_to_end": 2, "linear": 3}
    cell = ranking.cell_scores(table, "loss").iloc[0]
    assert (cell["pick"], cell["best"]) == ("end_to_end", Q2)
    assert cell["regret"] == pytest.approx(0.3 - 0.2)  # >= 0: the pick's loss minus the lowest loss
    assert cell["tau"] == pytest.approx(-1 / 3)  # e2e-linear concordant; both against q2 discordant


def test_a_perfect_ranking_has_tau_one_and_no_regret():
    table = ranking.ranked_vs_measured(ranking.measured_means(runs(MEASURED), "auc"),
                                       recommended({Q2: 4, "end_to_end": 3, Q3: 2, "linear": 1}), "auc")
    cell = ranking.cell_scores(table, "auc").iloc[0]
    assert (cell["tau"], cell["regret"], cell["pick_is_best"], cell["pick"]) == (1.0, 0.0, 1.0, Q2)


def test_a_tied_top_is_a_random_pick_expected_regret_and_undefined_tau():
    measured = {"linear": [0.70, 0.72], Q2: [0.86, 0.88], Q3: [0.75, 0.77]}  # no end_to_end in this grid
    recs = recommended({"linear": 1.0, Q2: 2.0, Q3: 3.0, "end_to_end": 0.5})
    scored = ranking.score_rankers(runs(measured), recs, "auc", {})
    cell = scored[ranking.END_TO_END][1].iloc[0]
    assert cell["pick"] == " / ".join(["linear", Q2, Q3])  # all tied at score 0
    assert cell["regret"] == pytest.approx(((0.87 - 0.71) + 0 + (0.87 - 0.76)) / 3)
    assert cell["pick_is_best"] == pytest.approx(1 / 3) and math.isnan(cell["tau"])


def test_the_rank_column_breaks_ties_in_score_and_unscored_strategies_are_left_out():
    recs = recommended({"end_to_end": 1.0, Q2: 1.0, "linear": 0.0, Q3: float("nan")}).assign(rank=[2, 1, 3, 4])
    scored = ranking.score_rankers(runs(MEASURED), recs, "auc", {})
    table, cells = scored[ranking.RECOMMENDER]
    assert table["strategy"].tolist() == [Q2, "end_to_end", "linear"]  # q3 has no score: not ranked
    assert (cells.iloc[0]["pick"], cells.iloc[0]["regret"]) == (Q2, 0.0)
    assert scored[ranking.END_TO_END][1].iloc[0]["n_strategies"] == 3  # the baselines rank the same strategies


def test_a_pick_tied_with_the_measured_best_has_no_regret():
    measured = {"end_to_end": [0.80, 0.90], Q2: [0.85, 0.85], "linear": [0.70, 0.70]}
    table = ranking.ranked_vs_measured(ranking.measured_means(runs(measured), "auc"),
                                       recommended({Q2: 2.0, "end_to_end": 1.0, "linear": 0.0}), "auc")
    assert table["measured_rank"].tolist() == [1, 1, 3]
    cell = ranking.cell_scores(table, "auc").iloc[0]
    assert (cell["best"], cell["regret"], cell["pick_is_best"]) == (f"{Q2} / end_to_end", 0.0, 1.0)
    # pairs: q2-e2e tied in mean; q2-linear and e2e-linear concordant: tau_b = 2 / sqrt((3 - 0) * (3 - 1))
    assert cell["tau"] == pytest.approx(2 / math.sqrt(6))


def test_study_rule_picks_q2_for_contrastive_q3_for_restorative_end_to_end_otherwise():
    grid = {"end_to_end": [0.8], "linear": [0.7], Q2: [0.9], Q3: [0.6]}
    rows = pd.concat([runs(grid, init=init) for init in ("simclr", "genesis", "random")])
    recs = pd.concat([recommended({s: 0.0 for s in grid}, init=init) for init in ("simclr", "genesis", "random")])
    families = {"simclr": "contrastive", "genesis": "restorative"}
    cells = ranking.score_rankers(rows, recs, "auc", families)[ranking.STUDY_RULE][1].set_index("init")
    assert cells["pick"].to_dict() == {"genesis": Q3, "random": "end_to_end", "simclr": Q2}
    assert cells["regret"].to_dict() == pytest.approx({"genesis": 0.3, "random": 0.1, "simclr": 0.0})
    rule = ranking.study_rule(recs, families)
    assert rule.groupby("init")["family"].first().to_dict() == {"genesis": "restorative", "random": "none",
                                                                "simclr": "contrastive"}


def test_families_come_from_the_experiments_pretraining_methods():
    pretrain = {"data": {"name": "synthetic2d"}, "backbone": {"name": "resnet_tiny"}, "epochs": 1}
    cfg = validate_config({"name": "x", "datasets": [{"name": "synthetic2d"}], "backbone": {"name": "resnet_tiny"},
                           "inits": ["random", {"label": "simclr", "pretrain": {"method": "simclr", **pretrain}},
                                     {"label": "genesis", "pretrain": {"method": "models_genesis", **pretrain}},
                                     {"label": "rot", "pretrain": {"method": "rotation", **pretrain}}],
                           "strategies": ["end_to_end", "q2"]}, ExperimentConfig)
    families = ranking.config_families(cfg)
    assert families == {"simclr": "contrastive", "genesis": "restorative", "rot": "predictive"}
    assert [ranking.rule_strategy(families.get(i)) for i in ("simclr", "genesis", "rot", "random")] == \
        [Q2, Q3, "end_to_end", "end_to_end"]
    assert [ranking.rule_strategy(f) for f in ("contrastive", "restorative")] == \
        [parse_strategy(q).label() for q in ("q2", "q3")]  # the labels the grid stores for q2 and q3


def test_stored_families_match_checkpoint_sidecars_by_content_hash(tmp_path):
    (tmp_path / "pretrain" / "simclr-x").mkdir(parents=True)
    (tmp_path / "pretrain" / "simclr-x" / "backbone.safetensors").write_bytes(b"weights")
    (tmp_path / "pretrain" / "simclr-x" / "backbone.json").write_text(json.dumps({"sha256": "abc",
                                                                                  "family": "contrastive"}))
    rows = pd.DataFrame({"init": ["simclr", "random", "other"],
                         "config": [{"init": {"sha256": "abc"}}, {"init": {"sha256": None}},
                                    {"init": {"sha256": "elsewhere"}}]})
    assert ranking.stored_families(rows, tmp_path) == {"simclr": "contrastive"}


def test_summary_averages_over_cells_per_ranker():
    rows = pd.concat([runs(MEASURED, fraction=f) for f in (0.1, 1.0)])
    recs = pd.concat([recommended(SCORES, fraction=0.1),
                      recommended({Q2: 4, "end_to_end": 3, Q3: 2, "linear": 1}, fraction=1.0)])
    table = ranking.summary(ranking.score_rankers(rows, recs, "auc", {"simclr": "contrastive"})).set_index("ranker")
    assert table.loc[ranking.RECOMMENDER, "cells"] == 2
    assert table.loc[ranking.RECOMMENDER, "mean_tau"] == pytest.approx((1 / math.sqrt(30) + 1) / 2)
    assert table.loc[ranking.RECOMMENDER, "mean_regret"] == pytest.approx(0.11 / 2)
    assert table.loc[ranking.RECOMMENDER, "pick_is_best_rate"] == 0.5
    assert table.loc[ranking.STUDY_RULE, "mean_regret"] == 0.0  # q2 is measured best in both cells
    assert table.loc[ranking.END_TO_END, "mean_regret"] == pytest.approx(0.05)


def test_fusions_failed_and_undefined_runs_are_left_out():
    rows = runs(MEASURED)
    rows["config"] = [{"init": {}}] * len(rows)
    fusion = runs({"end_to_end": [0.99]}, init="fusion").assign(config=[{"init": {"members": [{"init": "a"}]}}])
    failed = runs({"linear": [0.1]}).assign(status="failed", seed=7, config=[{"init": {}}])
    undefined = runs({Q2: [float("nan")]}).assign(seed=8, config=[{"init": {}}])
    rows = pd.concat([rows.assign(status="done"), fusion.assign(status="done"), failed,
                      undefined.assign(status="done")])
    means = ranking.measured_means(rows, "auc").set_index("strategy")
    assert set(ranking.measured_means(rows, "auc")["init"]) == {"simclr"}
    assert means.loc["linear", "mean"] == pytest.approx(0.71) and means.loc[Q2, "n"] == 2


def test_bad_input_is_refused_by_name():
    with pytest.raises(ConfigError, match="'dice' is not in these results; allowed: auc"):
        ranking.measured_means(runs(MEASURED), "dice")
    with pytest.raises(ConfigError, match="columns score are missing"):
        ranking.ranked_vs_measured(ranking.measured_means(runs(MEASURED), "auc"),
                                   recommended(SCORES).drop(columns="score"), "auc")
    twice = pd.concat([recommended(SCORES), recommended({"linear": 0.0})])
    with pytest.raises(ConfigError, match=r"2 rows repeat .* toy \| simclr \| 0.1 \| linear; allowed: one row each"):
        ranking.score_rankers(runs(MEASURED), twice, "auc", {})
    mixed = runs(MEASURED).assign(config=[{"train": {"epochs": e}} for e in (3, 5) * 5])
    with pytest.raises(ConfigError, match="mixes experiments"):
        ranking.measured_means(mixed, "auc")
