"""``medtransfer`` command line: a thin layer over the Python API (run, pretrain, results, describe, list)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medtransfer import __version__
from medtransfer.cli_cache import add_cache_parser
from medtransfer.cli_zoo import add_zoo_parser
from medtransfer.errors import MedtransferError
from medtransfer.interrupts import Interrupted, signals_interrupt


def _run(args) -> int:
    from medtransfer.bench.ray_connect import early_connection
    connection = early_connection(args.experiment, args.workers, args.address, args.verbose)  # before torch loads
    try:
        return _run_grid(args, connection)
    finally:
        if connection is not None:
            connection.close()


def _run_grid(args, ray_connection) -> int:
    from medtransfer.bench.runner import run_experiment
    from medtransfer.bench.store import ResultStore
    from medtransfer.config import ExperimentConfig, HardwareConfig
    from medtransfer.config_files import load_config, validate_config
    from medtransfer.report.coverage import finished_runs
    from medtransfer.report.integrity import format_warnings
    from medtransfer.report.tables import format_table, summary_table

    from lightning.pytorch.utilities import rank_zero_only

    cfg = load_config(args.experiment, ExperimentConfig)
    if args.workers or args.address:  # either flag means the Ray executor
        flags = {"executor": "ray", **({"workers": args.workers} if args.workers else {}),
                 **({"address": args.address} if args.address else {})}
        hardware = validate_config({**cfg.hardware.model_dump(), **flags}, HardwareConfig, source="--workers/--address")
        cfg = cfg.model_copy(update={"hardware": hardware})
    summary = run_experiment(cfg, args.output, verbose=args.verbose, fail_fast=args.fail_fast,
                             progress=not args.no_progress, ray_connection=ray_connection)
    if rank_zero_only.rank != 0:  # under DDP every process runs the grid; one report is enough
        return 1 if summary.failed else 0
    rows = ResultStore(summary.folder).rows(status=None)  # all runs: they tell the folder's experiments apart
    if len(finished_runs(rows)):
        print(format_table(summary_table(rows, args.metric), args.metric))
    listed = format_warnings(rows)
    if listed:
        print("\n" + listed)
    print(f"\n{summary.done} run(s) done, {summary.skipped} already finished, {len(summary.failed)} failed "
          f"of {summary.total}")
    for failure in summary.failed:
        print(f"  failed: {failure}", file=sys.stderr)
    print(f"results: {summary.folder.resolve()}")
    _say_missing_folders(ResultStore(summary.folder))
    return 1 if summary.failed else 0


def _say_missing_folders(store) -> None:
    """Finished runs whose folder was deleted by hand keep their metrics, but the user should know what is gone."""
    missing = store.missing_run_folders(store.rows(status=None))
    if missing:
        named = ", ".join(f"runs/{run_id[:16]}" for run_id in missing[:3]) + (", ..." if len(missing) > 3 else "")
        print(f"note: {len(missing)} finished run(s) lost their folder ({named}): their metrics are kept and not "
              "redone; their training logs (training curves) and test predictions are gone")


def _recommend(args) -> int:
    import json

    from medtransfer.config import ExperimentConfig
    from medtransfer.config_files import load_config
    from medtransfer.recommend import recommend
    from medtransfer.recommend.output import format_recommendations
    from medtransfer.recommend.run import check_arguments

    check_arguments(args.budget, args.steps)  # bad flags fail before the experiment file is even read
    cfg = load_config(args.experiment, ExperimentConfig)
    folder = Path(args.output or cfg.output or Path("runs") / cfg.name)
    table = recommend(cfg, folder, budget=args.budget, steps=args.steps, all_depths=args.all_depths,
                      verbose=args.verbose)
    print(format_recommendations(table, json.loads((folder / "recommendations.json").read_text())))
    print(f"recommendations: {(folder / 'recommendations.csv').resolve()}")
    return 0


def _pretrain(args) -> int:
    from medtransfer.bench.runner import quiet_lightning
    from medtransfer.config import PretrainConfig
    from medtransfer.config_files import load_config
    from medtransfer.pretrain.run import pretrain

    cfg = load_config(args.config, PretrainConfig)
    if args.init is not None:
        cfg = cfg.model_copy(update={"init": args.init.resolve()})
    if not args.verbose:
        quiet_lightning()
    resume = True if args.resume else ("auto" if args.resume is None else False)
    print(f"checkpoint: {pretrain(cfg, args.output, verbose=args.verbose, resume=resume).resolve()}")
    return 0


def _results(args) -> int:
    from medtransfer.bench.store import ResultStore
    from medtransfer.report.coverage import finished_runs
    from medtransfer.report.integrity import format_warnings, select_config
    from medtransfer.report.tables import format_table, summary_table

    store = ResultStore(args.folder, read_only=True)
    rows = store.rows(status=None)  # all runs: they tell the folder's experiments apart
    if args.config:
        rows = select_config(rows, args.config)
    if not len(finished_runs(rows)):
        print("no finished runs yet")
    else:
        summary = summary_table(rows, args.metric)
        print(format_table(summary, args.metric))
        if args.csv:
            try:
                summary.to_csv(args.csv, index=False)
            except OSError as err:
                raise MedtransferError(f"--csv: cannot write {args.csv} ({err.strerror or err})") from err
    listed = format_warnings(rows)
    if listed:
        print("\n" + listed)
    unfinished = rows[rows["status"] != "done"]
    if len(unfinished):
        print(f"\nunfinished: {unfinished['status'].value_counts().to_dict()} (run the experiment again to redo)")
    _say_missing_folders(store)
    return 0


def _report(args) -> int:
    from medtransfer.bench.store import ResultStore
    from medtransfer.report import report_folder

    try:
        path = report_folder(args.folder, args.output, args.metric, args.baseline, args.config)
    except OSError as err:  # e.g. FOLDER/report inside a read-only experiment folder
        where = err.filename or args.output or Path(args.folder) / "report"
        raise MedtransferError(f"{where}: cannot write the report ({err.strerror or err}); pass --output to write it "
                               "elsewhere") from err
    print(f"report: {path.resolve()}")
    _say_missing_folders(ResultStore(args.folder, read_only=True))
    return 0


def _describe(args) -> int:
    from medtransfer.models.depth import describe_units
    from medtransfer.models.factory import backbone_spec, create_backbone, default_input_size

    spec = backbone_spec(args.backbone)
    size = args.input_size or default_input_size(args.backbone)
    backbone = create_backbone(args.backbone, args.in_chans, size, small_stem=args.small_stem)
    views = [args.view] if args.view else list(backbone.views)
    total = sum(p.numel() for p in backbone.parameters())
    print(f"{args.backbone}: {spec.description}; {spec.spatial_dims}D, {total:,} parameters, "
          f"input {backbone.in_chans}x{'x'.join(map(str, backbone.input_size))}")
    for view in views:
        print(f"\nview '{view}'" + (" (default)" if view == backbone.default_view else ""))
        print(f"{'unit':>4}  {'quarter':<7} {'depth':<9} {'steps':<40} {'out ch':>6} {'params':>12} {'share':>6}")
        for row in describe_units(backbone, view):
            print(f"{row['unit']:>4}  {row['quarter']:<7} {row['depth']:<9} {row['steps']:<40} {row['channels']:>6} "
                  f"{row['params']:>12,} {row['param_share']:>6.1%}")
    return 0


def _list(args) -> int:
    from medtransfer.data import DATASETS
    from medtransfer.evaluate import METRICS, SEGMENTATION_METRICS
    from medtransfer.finetune.strategies import QUARTER_SHORTHANDS, STRATEGIES
    from medtransfer.models.factory import BACKBONES
    from medtransfer.pretrain import METHODS

    print("datasets:   " + ", ".join(DATASETS))
    print("backbones:  " + ", ".join(f"{n} ({s.spatial_dims}D)" for n, s in BACKBONES.items())
          + ", or any timm model name with features_only")
    print("strategies: " + ", ".join(list(STRATEGIES) + list(QUARTER_SHORTHANDS)))
    print("methods:    " + ", ".join(METHODS))
    print("metrics:    " + ", ".join(METRICS) + "; segmentation: " + ", ".join(SEGMENTATION_METRICS))
    return 0


def _method_names() -> list[str]:
    from medtransfer.pretrain import METHODS
    return [f"{name} ({method.family}, {'/'.join(f'{d}D' for d in method.spatial_dims)})"
            for name, method in METHODS.items()]


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose ``epilog`` may be a function, called only when the help is shown: listing the methods
    imports every method (torch, Lightning, lightly), which ``medtransfer --help`` or ``results`` must not pay for."""

    def format_help(self) -> str:
        if callable(self.epilog):
            self.epilog = self.epilog()
        return super().format_help()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medtransfer", description="Which pre-training, and which way of "
                                     "fine-tuning it, serves a medical-imaging task with few labels?")
    parser.add_argument("--version", action="version", version=f"medtransfer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run an experiment grid (skips finished runs)",
                         description="Expand EXPERIMENT into inits x datasets x strategies x policies x label "
                         "fractions x seeds and run every unfinished run; results go to a SQLite store in the output "
                         "folder.")
    run.add_argument("experiment", type=Path, help="experiment YAML file")
    run.add_argument("--output", type=Path, help="experiment folder (default: 'output' in the file, or runs/NAME)")
    run.add_argument("--metric", default="auc", help="metric of the printed table (default: auc)")
    run.add_argument("--fail-fast", action="store_true", help="stop at the first failed run")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--verbose", action="store_true", help="show Lightning's per-run output")
    run.add_argument("--workers", type=int, help="run this many runs at a time as Ray tasks on a local Ray instance "
                     "(hardware.executor: ray)")
    run.add_argument("--address", help="run the runs as Ray tasks on this Ray cluster: 'auto' or HOST:PORT")
    run.set_defaults(func=_run)

    rec = sub.add_parser("recommend", help="rank the fine-tuning strategies from cheap probes, before the grid",
                         description="Predict, per dataset, init and label fraction, which strategies (depths) to "
                         "fine-tune from per-unit linear probes, relative gradient norms and representation shift, "
                         "spending at most --budget of the grid's fine-tuning time; writes recommendations.csv/.json "
                         "into the experiment folder.")
    rec.add_argument("experiment", type=Path, help="experiment YAML file")
    rec.add_argument("--output", type=Path, help="experiment folder (default: 'output' in the file, or runs/NAME)")
    rec.add_argument("--budget", type=float, default=0.1, help="probe time as a share of the grid's fine-tuning "
                     "time (default: 0.1)")
    rec.add_argument("--steps", type=int, default=300, help="most steps of the gradient profile (default: 300)")
    rec.add_argument("--all-depths", action="store_true", help="rank end-to-end, linear, each quarter and the "
                     "0-25/50/75 %% truncations besides the experiment's strategies")
    rec.add_argument("--verbose", action="store_true", help="show pre-training output and per-group progress")
    rec.set_defaults(func=_recommend)

    pre = sub.add_parser("pretrain", help="self-supervised pre-training of a backbone",
                         description="Pre-train a backbone on a dataset's images (labels unused) with one of the "
                         "methods listed by 'medtransfer list'; writes backbone.safetensors + backbone.json.",
                         epilog=lambda: "methods: " + ", ".join(_method_names()))
    pre.add_argument("config", type=Path, help="pre-training YAML file")
    pre.add_argument("--output", type=Path, help="output folder (default: 'output' in the file)")
    pre.add_argument("--init", type=Path, help="start from these weights (continual pre-training): a new run")
    pre.add_argument("--resume", action=argparse.BooleanOptionalAction, default=None,
                     help="continue this config's interrupted run from its last epoch (default: when one exists; "
                     "--no-resume starts over)")
    pre.add_argument("--verbose", action="store_true", help="show Lightning's output")
    pre.set_defaults(func=_pretrain)

    res = sub.add_parser("results", help="mean ± std over seeds of an experiment folder")
    res.add_argument("folder", type=Path, help="experiment folder (holds results.sqlite)")
    res.add_argument("--metric", default="auc", help="metric to summarise (default: auc)")
    res.add_argument("--csv", type=Path, help="also write the summary to this CSV file")
    res.add_argument("--config", help="only the runs of this config key (a folder holding several experiments "
                     "prints its keys under the table)")
    res.set_defaults(func=_results)

    rep = sub.add_parser("report", help="HTML report with CIs, tests against a baseline and figures",
                         description="Write report.html (self-contained) plus Markdown, CSV, LaTeX tables and PNG "
                         "figures from an experiment folder's results store, and print the report's path.")
    rep.add_argument("folder", type=Path, help="experiment folder (holds results.sqlite)")
    rep.add_argument("--baseline", default="random/end_to_end",
                     help="INIT/STRATEGY cell every other cell is compared with, or INIT alone to compare inits "
                     "under the same strategy (default: random/end_to_end)")
    rep.add_argument("--metric", help="metric of the comparisons and figures (default: auc when present)")
    rep.add_argument("--output", type=Path, help="report folder (default: FOLDER/report)")
    rep.add_argument("--config", help="report the runs of this config key ('results' prints the keys of a folder "
                     "that holds several experiments)")
    rep.set_defaults(func=_report)

    desc = sub.add_parser("describe", help="a backbone's depth units with their share of depth and parameters")
    desc.add_argument("backbone", help="backbone name (see 'medtransfer list')")
    desc.add_argument("--view", help="unit convention (default: all views)")
    desc.add_argument("--in-chans", type=int, default=3, help="input channels (default: 3)")
    desc.add_argument("--input-size", type=int, help="input size (default: 224 for 2D, 64 for 3D)")
    desc.add_argument("--small-stem", action="store_true", help="MedMNIST-style 3x3 stem without max-pool")
    desc.set_defaults(func=_describe)

    lst = sub.add_parser("list", help="registered datasets, backbones, strategies, methods and metrics")
    lst.set_defaults(func=_list)

    add_zoo_parser(sub)
    add_cache_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with signals_interrupt():  # Ctrl-C and SIGTERM reach here through Lightning, which would exit 1 or 0
            return args.func(args)
    except MedtransferError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Interrupted) as err:
        how = f" by {err}" if isinstance(err, Interrupted) else ""
        print(f"\ninterrupted{how}: finished work is stored; run the same command again to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
