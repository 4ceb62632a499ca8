"""How good is a predicted ranking of fine-tuning strategies, judged against the grid that was actually run?

Per (dataset, init, fraction) *cell* (and per training policy, when the runs have several), the measured value of a
strategy is its test metric averaged over the finished seeds; only strategies both ranked and measured are compared
(a recommender may rank depths the grid never ran, a grid may hold strategies it did not rank). Per cell:

* ``tau``: Kendall's tau-b between predicted scores and measured means (ties in either count as ties; NaN for fewer
  than two strategies or a constant side, e.g. a baseline whose favourite the grid lacks);
* ``regret``: measured value of the best strategy minus that of the pick (the best *ranked* one), in the metric's
  units and >= 0 (``evaluate.LOWER_IS_BETTER`` metrics flipped). Several strategies tied at the top are picked at
  random: regret and ``pick_is_best`` are then their expectation (mean over the tied picks).

Baselines are rankings in the same format, scored the same way: ``always_end_to_end`` and ``study_rule`` (Khan &
Fang 2023: contrastive pre-training -> fine-tune the 2nd quarter, restorative -> the 3rd, any other init ->
end-to-end). Fusion inits are never ranked: their rows are left out.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import kendalltau

from medtransfer.errors import ConfigError, allowed
from medtransfer.evaluate import LOWER_IS_BETTER
from medtransfer.models.depth import DepthRange
from medtransfer.report.coverage import finished_runs, metric_names
from medtransfer.report.fusion import fusion_members
from medtransfer.report.integrity import check_one_experiment, with_axes

CELL = ("dataset", "init", "fraction")
RANKING_COLUMNS = ("dataset", "init", "fraction", "strategy", "score")
RECOMMENDER, END_TO_END, STUDY_RULE = "recommender", "always end-to-end", "study rule"
RULE_QUARTERS = {"contrastive": "q2", "restorative": "q3"}  # Khan & Fang; every other family -> end_to_end
TIE_DECIMALS = 12  # far below any metric's resolution, far above float rounding
CELL_COLUMNS = ("n_strategies", "n_seeds", "tau", "pick", "best", "regret", "pick_is_best")


def measured_means(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per (cell, strategy): ``mean`` of ``metric`` over the finished seeds with a defined value (rounded to
    ``TIE_DECIMALS``, so that equal means summed in another order tie), and their number ``n``. Refuses a store
    mixing experiments (``integrity.check_one_experiment``): means never pool configs."""
    check_one_experiment(rows)
    if metric not in metric_names(rows):
        raise ConfigError(f"metric: {metric!r} is not in these results; allowed: {allowed(metric_names(rows))}")
    done = finished_runs(rows)
    done = done[done[f"metric.{metric}"].notna() & ~done["init"].isin(fusion_members(done))]
    keys = with_axes((*CELL, "strategy"), done)
    means = done.groupby(keys, sort=True)[f"metric.{metric}"].agg(mean="mean", n="count").reset_index()
    return means.assign(mean=means["mean"].round(TIE_DECIMALS))


def check_columns(ranking: pd.DataFrame) -> None:
    """Refuse a ranking without the columns scoring reads, or scoring one strategy of a cell twice (which would
    count its measured runs twice), naming them."""
    missing = [c for c in RANKING_COLUMNS if c not in ranking]
    if missing:
        raise ConfigError(f"recommendations: columns {', '.join(missing)} are missing; required: "
                          f"{', '.join(RANKING_COLUMNS)}")
    twice = ranking[ranking.duplicated([*CELL, "strategy"], keep=False)]
    if len(twice):
        first = twice.iloc[0]
        raise ConfigError(f"recommendations: {len(twice)} rows repeat a (dataset, init, fraction, strategy), e.g. "
                          f"{first['dataset']} | {first['init']} | {first['fraction']:g} | {first['strategy']}; "
                          "allowed: one row each")


def ranked_vs_measured(measured: pd.DataFrame, ranking: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per (cell, strategy) both ranked and measured: ``score``, ``predicted_rank`` and ``measured_rank``
    (1 = best, ties share the lowest rank) among those strategies, ``mean`` and ``n``. The predicted order is the
    ranking's ``rank`` column where it has one (the recommender breaks ties in score there), else its scores."""
    check_columns(ranking)
    ranked = ranking.loc[ranking["score"].notna(), [*RANKING_COLUMNS, *(["rank"] if "rank" in ranking else [])]]
    both = measured.merge(ranked, on=[*CELL, "strategy"], how="inner")
    both["order"] = both["rank"] if "rank" in both else -both["score"]
    cell = [k for k in measured.columns if k not in ("strategy", "mean", "n")]
    groups = both.groupby(cell, sort=False)
    both["predicted_rank"] = groups["order"].rank(method="min").astype(int)
    both["measured_rank"] = groups["mean"].rank(ascending=metric in LOWER_IS_BETTER, method="min").astype(int)
    both = both.drop(columns=["order", *(["rank"] if "rank" in both else [])])
    return both.sort_values([*cell, "predicted_rank", "strategy"]).reset_index(drop=True)


def cell_scores(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per cell of a ``ranked_vs_measured`` table: tau, the pick(s), the measured best, regret and pick_is_best
    (see the module docstring); ``n_seeds`` is the fewest seeds behind any compared strategy."""
    cell = [k for k in table.columns if k not in ("strategy", "mean", "n", "score", "predicted_rank",
                                                   "measured_rank")]
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    records = []
    for key, group in table.groupby(cell, sort=True):
        gain = sign * group["mean"].to_numpy()  # higher = better, whatever the metric
        picked = group["predicted_rank"].to_numpy() == 1
        regrets = gain.max() - gain[picked]
        tau = kendalltau(group["score"], gain).statistic if len(group) > 1 else np.nan
        records.append({**dict(zip(cell, key)), "n_strategies": len(group), "n_seeds": int(group["n"].min()),
                        "tau": float(tau), "pick": " / ".join(group.loc[picked, "strategy"]),
                        "best": " / ".join(group.loc[gain == gain.max(), "strategy"]),
                        "regret": float(regrets.mean()), "pick_is_best": float((regrets == 0).mean())})
    return pd.DataFrame(records, columns=[*cell, *CELL_COLUMNS])


def always_end_to_end(ranking: pd.DataFrame) -> pd.DataFrame:
    """``ranking``'s (cell, strategy) rows scored 1 for end_to_end and 0 for every other strategy (all tied)."""
    return ranking[list(CELL) + ["strategy"]].assign(score=(ranking["strategy"] == "end_to_end").astype(float))


def rule_strategy(family: str | None) -> str:
    """The strategy label the study's rule fine-tunes for an init of ``family`` (None: not pre-trained here)."""
    quarter = RULE_QUARTERS.get(family)
    # DepthRangeStrategy.label() of the quarter, spelled out so that `medtransfer report` never imports torch
    return "end_to_end" if quarter is None else f"range {DepthRange.parse(quarter)}"


def study_rule(ranking: pd.DataFrame, families: dict[str, str]) -> pd.DataFrame:
    """``ranking``'s rows scored 1 for the strategy the study's rule picks for the init's family (``families``:
    init name -> pre-training family; absent = not pre-trained, e.g. random), 0 for the rest; adds ``family``."""
    family = ranking["init"].map(families)
    chosen = family.map(rule_strategy)
    return ranking[list(CELL) + ["strategy"]].assign(score=(ranking["strategy"] == chosen).astype(float),
                                                      family=family.fillna("none"))


def score_rankers(rows: pd.DataFrame, recommendations: pd.DataFrame, metric: str,
                  families: dict[str, str]) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """{ranker: (its ``ranked_vs_measured`` table, its ``cell_scores``)} for the recommender and both baselines,
    all over the same ranked strategies (those with a score)."""
    check_columns(recommendations)
    recommendations = recommendations[recommendations["score"].notna()]
    measured = measured_means(rows, metric)
    rankings = {RECOMMENDER: recommendations, END_TO_END: always_end_to_end(recommendations),
                STUDY_RULE: study_rule(recommendations, families)}
    scored = {}
    for name, ranking in rankings.items():
        table = ranked_vs_measured(measured, ranking, metric)
        scored[name] = (table, cell_scores(table, metric))
    return scored


def summary(scored: dict[str, tuple[pd.DataFrame, pd.DataFrame]]) -> pd.DataFrame:
    """One row per ranker: cells scored, mean tau (over cells where it is defined), mean regret, pick-is-best rate."""
    return pd.DataFrame([{"ranker": name, "cells": len(cells), "mean_tau": cells["tau"].mean(),
                          "mean_regret": cells["regret"].mean(), "pick_is_best_rate": cells["pick_is_best"].mean()}
                         for name, (_, cells) in scored.items()])


def config_families(cfg) -> dict[str, str]:
    """init name -> pre-training family for the inits of an ``ExperimentConfig`` that know one: a pre-training in
    the experiment (its method's ``family``) or a medtransfer checkpoint (the family its sidecar records)."""
    from medtransfer.config_files import load_config
    from medtransfer.config import PretrainConfig
    from medtransfer.models.checkpoint import read_metadata
    from medtransfer.pretrain import METHODS

    families = {}
    for init in cfg.inits:
        if init.pretrain is not None:
            pretrain = load_config(init.pretrain, PretrainConfig) if isinstance(init.pretrain, Path) else init.pretrain
            families[init.name] = METHODS[pretrain.method].family
        elif init.checkpoint is not None and read_metadata(init.checkpoint).get("family"):
            families[init.name] = read_metadata(init.checkpoint)["family"]
    return families


def stored_families(rows: pd.DataFrame, folder: str | Path) -> dict[str, str]:
    """init name -> family for a results folder without its experiment file: each run's init content hash
    (``config.init.sha256``) matched against the checkpoint sidecars (``*.json``) under ``folder``, which is where
    the experiment's pre-trainings write theirs (``models.checkpoint.save_backbone``). Inits whose weights lie
    elsewhere are absent."""
    by_hash = {}
    for weights in Path(folder).rglob("*.safetensors"):
        try:
            meta = json.loads(weights.with_suffix(".json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):  # no sidecar, or not one of ours
            continue
        if isinstance(meta, dict) and meta.get("sha256") and meta.get("family"):
            by_hash[meta["sha256"]] = meta["family"]
    families = {}
    for init, config in zip(rows.get("init", []), rows.get("config", [])):
        sha = ((config or {}).get("init") or {}).get("sha256") if isinstance(config, dict) else None
        if sha in by_hash:
            families[init] = by_hash[sha]
    return families
