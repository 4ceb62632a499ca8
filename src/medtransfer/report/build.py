"""From an experiment's runs to a report: ``analyse`` computes everything (DataFrames and Figures, for notebooks),
``build_report`` writes it as HTML plus Markdown, CSV, LaTeX and PNG files, ``report_folder`` does so for a results
store on disk (what ``medtransfer report`` runs)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from medtransfer import __version__
from medtransfer.errors import ConfigError, MedtransferError, allowed
from medtransfer.evaluate.statistics import MARKERS, NOT_SIGNIFICANT
from medtransfer.report import comparisons as cmp
from medtransfer.report import imbalance, plots, stacking, tables
from medtransfer.report.fusion import fusion_table
from medtransfer.report.coverage import RUN_KEYS, finished_runs, metric_names, missing_runs
from medtransfer.report.integrity import check_one_experiment, grid_axes, select_config, warning_table, with_axes
from medtransfer.report.html import esc, figure_html, frame_html, page, runs_html
from medtransfer.report.provenance import compute_time, duration, machines_table, versions_table
from medtransfer.report.recommend import RecommendSection, recommend_section, section_html, write_files


@dataclass
class Analysis:
    """Everything a report shows, computed from the runs; ``figures`` are (name, caption, Figure)."""

    rows: pd.DataFrame
    metric: str
    baseline: cmp.Baseline
    strategy: str  # the strategy of the per-class and training-curve figures
    summary: pd.DataFrame
    comparisons: pd.DataFrame
    missing: pd.DataFrame
    warnings: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per (run, stored warning)
    fusions: pd.DataFrame = field(default_factory=pd.DataFrame)  # each fusion against its members (report.fusion)
    figures: list[tuple[str, str, Figure]] = field(default_factory=list)
    class_gains: pd.DataFrame = field(default_factory=pd.DataFrame)  # report.imbalance: per class, vs the baseline
    notes: list[str] = field(default_factory=list)
    stacking: pd.DataFrame | None = None  # per training policy, each init against the baseline init
    recommendation: RecommendSection | None = None  # the folder's recommendations.csv vs the measured ranks


def _marker_legend() -> str:
    return ", ".join([f"{NOT_SIGNIFICANT} p ≥ 0.05"] + [f"{m} p < {t:g}" for t, m in reversed(MARKERS)])


def analyse(rows: pd.DataFrame, metric: str | None = None, baseline: str = cmp.DEFAULT_BASELINE,
            runs_folder: str | Path | None = None) -> Analysis:
    """Summary with CIs (every metric), comparisons against ``baseline`` and figures for ``metric``.

    ``rows`` is ``ResultStore(folder).rows(status=None)`` — all runs, so failed and unfinished ones are shown as
    missing — or any DataFrame with its columns. ``runs_folder`` (the experiment folder) adds training curves
    from the runs' logs, and ``medtransfer recommend``'s ranking against the measured one when it holds one.
    ``metric`` defaults to auc when present.
    """
    if not len(finished_runs(rows)):
        raise MedtransferError("no finished run to report on yet; run the experiment first")
    check_one_experiment(rows)
    present = metric_names(rows)
    metric = metric or ("auc" if "auc" in present else present[0])
    if metric not in present:
        raise ConfigError(f"--metric: {metric!r} is not in these results; allowed: {allowed(present)}")
    base = cmp.Baseline.parse(baseline)
    strategies = sorted(finished_runs(rows)["strategy"].unique())
    strategy = base.strategy or ("end_to_end" if "end_to_end" in strategies else strategies[0])
    summary = tables.summary_with_ci(rows, [metric] + [m for m in present if m != metric])
    result = Analysis(rows, metric, base, strategy, summary, cmp.comparison_table(rows, metric, base),
                      missing_runs(rows, metric), warning_table(finished_runs(rows)), fusion_table(rows, metric))
    if "policy" in grid_axes(finished_runs(rows)):
        result.stacking = stacking.stacking_table(rows, metric, base.init)
    result.recommendation = recommend_section(rows, runs_folder, metric) if runs_folder else None
    _notes(result)
    _figures(result, runs_folder)
    return result


def _notes(a: Analysis) -> None:
    cells = a.summary[a.summary["metric"] == a.metric]
    if len(a.missing):
        a.notes.append(f"{len(a.missing)} of {int(cells['n_expected'].sum())} runs are missing for {a.metric} "
                       f"({', '.join(f'{k}: {v}' for k, v in a.missing['status'].value_counts().items())}); "
                       "their cells show 'n=k of m' and are shaded, and their runs are listed under Missing runs.")
    if len(a.warnings):
        runs = len(a.warnings.drop_duplicates(list(RUN_KEYS)))
        a.notes.append(f"{runs} finished run(s) stored warnings (e.g. model selection on an undefined validation "
                       "metric, a constant predictor): their numbers are in the tables but may not mean what they "
                       "seem; see Warnings.")
    if cells["n"].max() < 2:
        a.notes.append("Every cell has a single finished seed: no statistical test is run, because a test needs at "
                       "least two seeds per compared cell. Add seeds to the experiment to get p-values.")


def _figures(a: Analysis, runs_folder) -> None:
    rows, summary = a.rows, a.summary
    if "policy" in summary:  # a figure pools no policies: it shows one, the stacking table compares them all
        policy = "none" if (summary["policy"] == "none").any() else sorted(summary["policy"].unique())[0]
        rows, summary = rows[rows["policy"] == policy], summary[summary["policy"] == policy]
        a.notes.append(f"Figures show the runs under training policy '{policy}'; the stacking table compares all "
                       "policies.")
    a.figures.append(("label-efficiency", f"{a.metric} vs label fraction per strategy, one line per init; band = "
                      "95 % CI over seeds", plots.label_efficiency(summary, a.metric)))
    depth = plots.depth_table(rows, a.metric)
    partial = (depth["start"] < depth["end"]) & (depth["end"] - depth["start"] < 1)  # a range, not all or none
    if partial.any():
        a.figures.append(("depth-heatmap", f"mean {a.metric} by the depth range that is fine-tuned (0 = input, 1 = "
                          "last unit; the head is always trained) and init", plots.depth_heatmap(depth, a.metric)))
    else:
        a.notes.append("No depth-range strategy (range / q1..q4) in these runs: no depth heatmap.")
    key = plots.per_class_key(rows, a.metric)
    per_class = plots.per_class_table(rows, key) if key else pd.DataFrame()
    if len(per_class) and (per_class["strategy"] == a.strategy).any():
        a.figures.append(("per-class", f"per-class {key} under {a.strategy}, ± std over seeds; rare = training "
                          f"prevalence below {plots.RARE_SHARE:g} x the mean prevalence of the task's classes",
                          plots.per_class_bars(per_class, key, a.strategy)))
    else:
        a.notes.append("No per-class values of a task with more than two classes or labels: no per-class bars.")
    a.class_gains = imbalance.class_gains(a.rows, a.baseline.init)  # every policy, each its own rows
    _, figures, notes = imbalance.report_parts(rows, a.metric, a.baseline.init)
    a.figures += figures
    a.notes += notes
    log = plots.training_log(rows, runs_folder, a.strategy) if runs_folder else pd.DataFrame()
    if len(log):
        a.figures.append(("training-curves", f"training loss and validation {a.metric} per epoch under {a.strategy}, "
                          "mean ± std over seeds", plots.training_curves(log, a.metric)))
        runs = finished_runs(rows)
        expected = (runs["strategy"] == a.strategy).sum()
        unlogged = expected - log.groupby(["dataset", "fraction", "init", "seed"]).ngroups
        if unlogged:  # e.g. run folders deleted by hand: the curves rest on fewer runs, which the reader must know
            a.notes.append(f"Training curves under {a.strategy}: {unlogged} of {expected} finished runs have no "
                           "training log (runs/<id>/metrics.csv deleted?); the curves average the other runs only.")
    else:
        a.notes.append("No training logs (metrics.csv) found for these runs: no training curves.")


def _overview(a: Analysis) -> str:
    done = finished_runs(a.rows)
    levels = "".join(f"<li><b>{k}</b>: {esc(', '.join(map(str, sorted(a.rows[k].unique()))))}</li>"
                     for k in with_axes(RUN_KEYS, a.rows))
    tested = a.comparisons["p_holm"].notna()
    significant = a.comparisons[tested & (a.comparisons["p_holm"] < 0.05)]
    found = "; ".join(f"{r.init}/{r.strategy}{f' ({r.policy})' if 'policy' in significant else ''} at "
                      f"{r.fraction * 100:g}%" for r in significant.itertuples())
    notes = "".join(f'<p class="warn">{esc(n)}</p>' for n in a.notes)
    return (f"<p>{len(done)} finished runs of {len(a.rows)} recorded; main metric <b>{esc(a.metric)}</b>; baseline "
            f"<b>{esc(a.baseline)}</b>. Differing from the baseline after Holm correction (p &lt; 0.05): "
            f"<b>{len(significant)} of {int(tested.sum())}</b> tested comparisons"
            f"{': ' + esc(found) if found else ''}.</p><ul>{levels}</ul>{notes}")


def _comparisons_html(a: Analysis) -> str:
    mode = ("every other init and strategy against this one cell" if a.baseline.strategy else
            "every other init against it under the same strategy")
    text = (f"<p>Baseline <b>{esc(a.baseline)}</b>: {mode}, at the same dataset and label fraction. Runs are "
            "<b>paired by seed</b> (a seed fixes the labelled subset and the head's initialisation); paired t-test on "
            "the per-seed differences with Wilcoxon signed-rank beside it; Welch's t-test and Mann-Whitney U when "
            f"two cells share no seed. p-values are Holm-corrected over the {len(a.comparisons)} comparisons of this "
            f"table; the marker reads the Holm-adjusted t-test p: {_marker_legend()} (Hosseinzadeh Taher et al. "
            "2021). Effect: d_z = mean/sd of the paired differences, Hedges' g unpaired. Improvement = "
            "(candidate − baseline)/|baseline| in %, positive = better.</p>")
    return text + frame_html(cmp.display_table(a.comparisons), "comparisons")


def _fusions_html(a: Analysis) -> str:
    text = ("<p>Each fusion against each of its members (under the member's own strategy, else the fusion's) and "
            "against its best member (best mean over seeds in the cell), at the same dataset and label fraction, "
            "<b>paired by seed</b>; tests as in Comparisons, Holm-corrected over the "
            f"{len(a.fusions)} rows of this table. Improvement positive = the fusion is better.</p>")
    return text + frame_html(cmp.display_table(a.fusions), "comparisons")


def _stacking_html(a: Analysis) -> str:
    text = (f"<p>Under each training policy, every init against <b>{esc(a.baseline.init)}</b> with the same policy, "
            "strategy and label fraction: gain = init − baseline init, paired by seed, marker from the "
            f"Holm-adjusted paired t-test over the {len(a.stacking)} comparisons of this table "
            f"({_marker_legend()}). A gain that holds under 'none' but not under a policy does not stack.</p>")
    return text + frame_html(stacking.stacking_display(a.stacking), "stacking")


def _environment_html(a: Analysis) -> str:
    time = compute_time(a.rows)
    dated = {"started_at", "finished_at"} <= set(a.rows)
    period = (f"runs from {pd.to_datetime(a.rows['started_at']).min()} to "
              f"{pd.to_datetime(a.rows['finished_at']).max()}; " if dated else "")
    return (f"<p>{period}fine-tuning compute: fit {duration(time['fit_s'])} + test {duration(time['test_s'])} over "
            f"{time['runs_timed']} finished runs; wall clock of all ended runs {duration(time['wall_s'])} "
            "(pre-training is not in the results store and not counted).</p>"
            + ("<h3>Package versions (one row per distinct set)</h3>" + frame_html(versions_table(a.rows), "versions")
               if "versions" in a.rows else "")
            + ("<h3>Machines</h3>" + frame_html(machines_table(a.rows), "machines") if "hostname" in a.rows else "")
            + f'<p class="note">Report written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by medtransfer '
            f"{esc(__version__)}.</p>")


def build_report(rows: pd.DataFrame, output_dir: str | Path, metric: str | None = None,
                 baseline: str = cmp.DEFAULT_BASELINE, runs_folder: str | Path | None = None,
                 title: str = "medtransfer report") -> Path:
    """Write report.html and, beside it, summary.{csv,md,tex}, comparisons.{csv,md,tex}, missing_runs.csv,
    stacking.{csv,md} (runs with training policies), recommendation_{ranks,scores}.csv (a ``runs_folder`` holding
    recommendations.csv) and one PNG per figure into ``output_dir``; returns the path of report.html. Arguments as in
    ``analyse``."""
    a = analyse(rows, metric, baseline, runs_folder)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = list(dict.fromkeys(a.summary["metric"]))
    a.summary.to_csv(out / "summary.csv", index=False)
    (out / "summary.md").write_text("\n".join(tables.to_markdown(a.summary, m) for m in metrics), encoding="utf-8")
    (out / "summary.tex").write_text("\n".join(f"% {tables.table_title(m)}\n{tables.to_latex(a.summary, m)}"
                                               for m in metrics), encoding="utf-8")
    a.comparisons.to_csv(out / "comparisons.csv", index=False)
    (out / "comparisons.md").write_text(cmp.to_markdown(a.comparisons), encoding="utf-8")
    (out / "comparisons.tex").write_text(cmp.to_latex(a.comparisons), encoding="utf-8")
    a.missing.to_csv(out / "missing_runs.csv", index=False)
    a.class_gains.to_csv(out / "per_class.csv", index=False)
    per_class = imbalance.per_class_display(a.class_gains)
    (out / "per_class.md").write_text(per_class.to_markdown(index=False, disable_numparse=True), encoding="utf-8")
    if len(a.fusions):
        a.fusions.to_csv(out / "fusions.csv", index=False)
        (out / "fusions.md").write_text(cmp.to_markdown(a.fusions), encoding="utf-8")
    if a.stacking is not None:
        a.stacking.to_csv(out / "stacking.csv", index=False)
        (out / "stacking.md").write_text(stacking.to_markdown(a.stacking, a.metric, a.baseline.init), encoding="utf-8")
    if a.recommendation is not None:
        write_files(a.recommendation, out)
    figures = []
    for name, caption, fig in a.figures:
        element, png = figure_html(fig, caption, name)
        (out / f"{name}.png").write_bytes(png)
        figures.append(element)
    others = "".join(f"<h3>{esc(tables.table_title(m))}</h3>{tables.to_html(a.summary, m)}" for m in metrics[1:])
    summaries = (f"<h3>{esc(tables.table_title(a.metric))}</h3>{tables.to_html(a.summary, a.metric)}"
                 + (f"<details><summary>other metrics: {esc(', '.join(metrics[1:]))}</summary>{others}</details>"
                    if others else ""))
    missing = frame_html(a.missing, "missing") if len(a.missing) else "<p>None: every run of the grid finished.</p>"
    html_text = page(title, [
        ("overview", "Overview", _overview(a)),
        ("summary", "Summary: mean ± std and 95 % CI over seeds", summaries),
        ("figures", "Figures", "\n".join(figures)),
        ("comparisons", f"Comparisons against {a.baseline} ({a.metric})", _comparisons_html(a)),
        *([("per-class", f"Per class: gains over {a.baseline.init} (rare classes marked)",
            f"<p>Per-class {esc(imbalance.gain_key(a.rows) or '')}, mean over seeds; gain = init − "
            f"{esc(a.baseline.init)} averaged over the seeds both ran; prevalence = the class's share of the training "
            f"examples per epoch.</p>{frame_html(per_class, 'per-class')}")] if len(per_class) else []),
        *([("fusions", f"Fusions against their members ({a.metric})", _fusions_html(a))] if len(a.fusions) else []),
        *([("stacking", f"Stacking: init gain per training policy ({a.metric})", _stacking_html(a))]
          if a.stacking is not None else []),
        *([("recommend", f"Recommended vs measured strategy ranking ({a.metric})",
            section_html(a.recommendation, a.metric))] if a.recommendation is not None else []),
        ("missing", "Missing runs", missing),
        ("warnings", "Warnings", frame_html(a.warnings, "warnings") if len(a.warnings) else
         "<p>None: no finished run stored a warning.</p>"),
        ("environment", "Environment and compute time", _environment_html(a)),
        ("runs", "Runs and their exact configs", runs_html(a.rows)),
    ])
    path = out / "report.html"
    path.write_text(html_text, encoding="utf-8")
    return path


def report_folder(folder: str | Path, output: str | Path | None = None, metric: str | None = None,
                  baseline: str = cmp.DEFAULT_BASELINE, config: str | None = None) -> Path:
    """Report on the results store in ``folder`` (default output: ``folder``/report); returns report.html's path.
    ``config`` keeps the runs of one config key of a folder that holds several experiments."""
    from medtransfer.bench.store import ResultStore

    folder = Path(folder)
    rows = ResultStore(folder, read_only=True).rows(status=None)
    if config:
        rows = select_config(rows, config)
    return build_report(rows, output or folder / "report", metric, baseline, runs_folder=folder,
                        title=f"medtransfer report: {folder.resolve().name}")
