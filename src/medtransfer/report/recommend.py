"""Was ``medtransfer recommend`` right? The report's section, shown when the experiment folder holds the
recommender's ``recommendations.csv`` and the grid has (partly) run.

Per (dataset, init, fraction): the recommender's predicted rank of each strategy beside its measured rank (mean over
seeds), Kendall's tau and the regret of its pick, and the regret of the two baselines, always end-to-end and the
study's rule (``evaluate.ranking``). The rule needs each init's pre-training family; without the experiment file it
is read from the checkpoint sidecars in the folder (``ranking.stored_families``): an init whose family is not found
there counts as not pre-trained (end-to-end), and the table says so in its ``family`` column.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from medtransfer.errors import ConfigError
from medtransfer.evaluate import ranking
from medtransfer.report.html import esc, frame_html

FILE = "recommendations.csv"
RANK_COLUMNS = ["score", "predicted_rank", "mean", "n", "measured_rank"]


@dataclass
class RecommendSection:
    """``ranks``: the recommender's rank vs the measured rank per strategy; ``cells``: per cell, the recommender's
    tau, pick, regret and the baselines' picks and regrets; ``summary``: one row per ranker."""

    ranks: pd.DataFrame
    cells: pd.DataFrame
    summary: pd.DataFrame


def read_recommendations(folder: str | Path) -> pd.DataFrame | None:
    """The folder's ``recommendations.csv``, or None when there is none."""
    path = Path(folder) / FILE
    if not path.is_file():
        return None
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not a recommendations table ({err}); rerun `medtransfer recommend` or delete "
                          "it") from err


def cells_table(scored: dict, families: dict[str, str]) -> pd.DataFrame:
    """The recommender's ``cell_scores`` with each baseline's pick and regret beside it, and the init's family
    ("none": not known to be pre-trained) that the rule went by."""
    cells = scored[ranking.RECOMMENDER][1]
    keys = [c for c in cells.columns if c not in ranking.CELL_COLUMNS]
    for name in (ranking.END_TO_END, ranking.STUDY_RULE):
        other = scored[name][1][[*keys, "pick", "regret"]]
        cells = cells.merge(other.rename(columns={"pick": f"pick ({name})", "regret": f"regret ({name})"}),
                            on=keys, how="left")
    return cells.assign(family=cells["init"].map(families).fillna("none"))


def recommend_section(rows: pd.DataFrame, folder: str | Path, metric: str,
                      families: dict[str, str] | None = None) -> RecommendSection | None:
    """The section's tables for the runs ``rows`` of ``folder``, or None when the folder has no recommendations.
    ``families`` (init -> pre-training family) overrides what the folder's checkpoints record."""
    recommendations = read_recommendations(folder)
    if recommendations is None:
        return None
    families = {**ranking.stored_families(rows, folder), **(families or {})}
    try:
        scored = ranking.score_rankers(rows, recommendations, metric, families)
    except ConfigError as err:
        raise ConfigError(f"{Path(folder) / FILE}: {err}") from err
    table = scored[ranking.RECOMMENDER][0]
    keys = [c for c in table.columns if c not in ("strategy", *RANK_COLUMNS)]
    ranks = table[[*keys, "strategy", *RANK_COLUMNS]]
    return RecommendSection(ranks, cells_table(scored, families), ranking.summary(scored))


def write_files(section: RecommendSection, out: Path) -> None:
    """recommendation_ranks.csv (per strategy) and recommendation_scores.csv (per cell) beside the report."""
    section.ranks.to_csv(out / "recommendation_ranks.csv", index=False)
    section.cells.to_csv(out / "recommendation_scores.csv", index=False)


def section_html(section: RecommendSection, metric: str) -> str:
    """The report's HTML for the section."""
    if section.cells.empty:
        return ('<p class="warn">recommendations.csv ranks no strategy the grid has finished runs of yet: nothing to '
                "compare.</p>")
    number = {c: "{:.3f}" for c in ("tau", "regret", "pick_is_best", "score", "mean", "mean_tau", "mean_regret",
                                     "pick_is_best_rate", f"regret ({ranking.END_TO_END})",
                                     f"regret ({ranking.STUDY_RULE})")}
    text = (f"<p>Strategies ranked by <code>medtransfer recommend</code> and run by the grid, per dataset, init and "
            f"label fraction: tau = Kendall's tau-b between predicted scores and measured mean {esc(metric)} over "
            f"seeds; regret = measured {esc(metric)} of the best strategy minus that of the pick (0 = the pick was "
            "the best; a tied top counts as a random pick). Baselines: always end-to-end, and the study's rule "
            "(Khan &amp; Fang 2023: contrastive pre-training → 2nd quarter, restorative → 3rd, otherwise "
            "end-to-end; family read from the folder's checkpoints, 'none' = not found, treated as not "
            "pre-trained).</p>")
    return (text + frame_html(section.summary, "recommend-summary", number)
            + frame_html(section.cells, "recommend-cells", number)
            + "<details><summary>predicted vs measured rank per strategy</summary>"
            + frame_html(section.ranks, "recommend-ranks", number) + "</details>")
