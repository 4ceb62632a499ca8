"""What a table of means can hide: runs of different experiments in one cell, and runs that finished with a warning.

Two experiment files (or one edited file) run into the same folder leave runs that differ in their config — say 15
and 30 epochs. Averaging them would report "n=4" for two seeds of two experiments; comparing them would pit one
experiment's init against the other's baseline, even when no cell holds both (one file with the random init, one
with SimCLR). ``config_table`` gives each run a short *config key* (a hash of exactly the settings one experiment
holds fixed but these runs do not, see ``SCOPES``) and a legend of those settings, so tables keep experiments apart;
``select_config`` keeps one of them; ``check_one_experiment`` refuses a mix where one experiment is required
(reports, tests).
``warning_table`` lists the warnings that ``finetune.diagnostics`` stored with each run.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd

from medtransfer.errors import ConfigError, allowed

CELL = ("dataset", "init", "strategy", "fraction")
RUN_KEYS = (*CELL, "seed")
AXES = {"policy": "none"}  # grid axes beyond the cell, with the value of runs that do not set them
KEY_DIGITS = 6
# Settings that differ between the runs of one experiment, and the run columns they go with: the grid's own axes
# and what the grid derives from them. Each is one value among runs sharing those columns ("cell": dataset, init,
# strategy, fraction and grid axes); every other setting (backbone, schedule...) is one value per experiment.
SCOPES = {"train.last_batch": "cell",  # follows the size of the labelled subset (``grid._train_identity``)
          "train.frozen_features": "cell",  # follows the strategy and the dataset's resize mode (``grid.RunSpec``)
          "train.monitor": ("dataset",), "train.segmentation": ("dataset",),  # resolved by the dataset's task
          "dataset": ("dataset",), "imbalance": ("dataset",),  # the dataset label names its options and ratio
          "init": ("dataset", "init"),  # e.g. one pre-training (one hash) per dataset; a fusion's members
          "strategy": ("strategy",), "policy": ("policy",)}
OWN_COLUMNS = {"seed", "fraction"}  # settings that are the runs' own columns: never a config's difference
_LONG = 16  # longer values (checkpoint hashes, paths) are shortened in the legend


def grid_axes(rows: pd.DataFrame) -> list[str]:
    """The ``AXES`` these runs vary or set: each is then a key of every cell (runs under different policies are
    different configs, never pooled). Absent from runs that never set one, so their tables look as before."""
    return [axis for axis, unset in AXES.items() if axis in rows and (rows[axis] != unset).any()]


def with_axes(keys, rows: pd.DataFrame) -> list[str]:
    """``keys`` with the runs' ``grid_axes`` inserted after "strategy" (or appended when it is absent)."""
    keys, axes = list(keys), grid_axes(rows)
    at = keys.index("strategy") + 1 if "strategy" in keys else len(keys)
    return keys[:at] + [a for a in axes if a not in keys] + keys[at:]


def _flatten(config, prefix: str = "") -> dict:
    """{"train.epochs": "15", ...}: every leaf of a nested config as canonical JSON text under its dotted path."""
    if not isinstance(config, dict):
        return {prefix.removesuffix("."): json.dumps(config, sort_keys=True)}
    return {k: v for key, value in config.items() for k, v in _flatten(value, f"{prefix}{key}.").items()}


def differing_settings(rows: pd.DataFrame) -> list[str]:
    """The config keys (dotted paths, seed and fraction aside) that take several values where one experiment has one
    (``SCOPES``: inside a cell for every key; across the whole folder for the backbone or schedule): the settings
    that tell the experiments in ``rows`` apart, even when no cell holds two of them. Empty for a single experiment.
    """
    if "config" not in rows or rows.empty:  # a hand-made frame: nothing to tell experiments apart by
        return []
    flat = [_flatten(c) for c in rows["config"]]
    differing = sorted(_differing(flat, rows))
    # An init's content (e.g. its pre-training's hash) differs between experiments that differ in another setting
    # (two backbones, each pre-trained): those settings already tell the experiments apart, and keying on the init
    # too would split each experiment's inits into separate configs, so that none could be compared with its baseline
    others = [key for key in differing if not key.startswith("init.")]
    if others and others != differing:
        experiments: dict[tuple, int] = {}
        tags = [experiments.setdefault(tuple(f.get(k) for k in others), len(experiments)) for f in flat]
        if not _differing(flat, rows, tags):
            return others
    return differing


def _scope(key: str, rows: pd.DataFrame) -> tuple[str, ...]:
    """The run columns among which ``key`` takes one value in one experiment (``SCOPES``; none: the whole folder)."""
    scope = next((s for path, s in SCOPES.items() if key == path or key.startswith(path + ".")), ())
    return tuple(c for c in (with_axes(CELL, rows) if scope == "cell" else scope) if c in rows)


def _differing(flat: list[dict], rows: pd.DataFrame, tags: list[int] | None = None) -> set[str]:
    """The keys (seed and fraction aside) of ``flat`` (one per run of ``rows``) that take several values among runs
    sharing the columns of their ``_scope`` (and their ``tags``, when given)."""
    groups: dict[tuple, list[np.ndarray]] = {}  # scope -> positions of each group of runs
    differing: set[str] = set()
    for key in set().union(*flat) - OWN_COLUMNS:
        scope = _scope(key, rows)
        if scope not in groups:
            frame = pd.DataFrame({c: rows[c].to_numpy() for c in scope} | ({"experiment": tags} if tags else {}))
            groups[scope] = (list(frame.groupby(list(frame), sort=False, dropna=False).indices.values())
                             if len(frame.columns) else [np.arange(len(flat))])
        if any(len({flat[i].get(key) for i in positions}) > 1 for positions in groups[scope]):
            differing.add(key)
    return differing


def _shown(value: str | None) -> str:
    text = "(absent)" if value is None else value.strip('"')
    return text if len(text) <= _LONG else text[:_LONG - 4] + "…"


def config_table(rows: pd.DataFrame) -> pd.DataFrame | None:
    """Per run (same index as ``rows``): ``config_key`` (a short key) and ``config_differs`` (its values of the
    differing settings, e.g. "train.epochs=30"); None when ``rows`` hold a single experiment.

    The key hashes only the differing settings, so it is the same for every run of one experiment and stays the same
    as long as the store's experiments differ in the same settings.
    """
    differing = differing_settings(rows)
    if not differing:
        return None
    records = []
    for config in rows["config"]:
        flat = _flatten(config)
        values = {key: flat.get(key) for key in differing}
        digest = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:KEY_DIGITS]
        records.append((digest, ", ".join(f"{k}={_shown(v)}" for k, v in values.items())))
    return pd.DataFrame(records, index=rows.index, columns=["config_key", "config_differs"])


def legend(configs: pd.DataFrame) -> str:
    """One line: "config abc123: train.epochs=15; def456: train.epochs=30"."""
    pairs = configs.drop_duplicates("config_key").sort_values("config_key")
    return "config " + "; ".join(f"{r.config_key}: {r.config_differs}" for r in pairs.itertuples())


def select_config(rows: pd.DataFrame, key: str) -> pd.DataFrame:
    """The runs of one experiment, by its config key (as ``results`` and ``report`` print it)."""
    configs = config_table(rows)
    keys = [] if configs is None else sorted(configs["config_key"].unique())
    if key not in keys:
        raise ConfigError(f"--config: {key!r} is not a config key of these runs; allowed: "
                          f"{allowed(keys) if keys else 'none (they hold a single experiment)'}")
    return rows[configs["config_key"] == key]


def check_one_experiment(rows: pd.DataFrame) -> None:
    """Refuse runs of several experiments (see ``differing_settings``), naming the settings and their config keys.

    That happens when an experiment file is edited (say, more epochs) and run again into the same folder, or two
    files share one: both are kept, and a mean over their runs would mix two experiments.
    """
    configs = config_table(rows)
    if configs is None:
        return
    raise ConfigError(f"this store mixes experiments: its runs differ in config keys "
                      f"{', '.join(differing_settings(rows))}, which one experiment holds fixed ({legend(configs)}); "
                      "report one of them with "
                      "--config KEY (in Python: select_config(rows, KEY)), or run the edited experiment into a new "
                      "folder")


def warning_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, warning) stored in the runs' ``extra["warnings"]``: the run's keys and the warning."""
    records = []
    if "extra" in rows:
        for run in rows.itertuples(index=False):
            extra = run.extra if isinstance(run.extra, dict) else {}
            for warning in extra.get("warnings", []):
                records.append({key: getattr(run, key) for key in with_axes(RUN_KEYS, rows)} | {"warning": warning})
    return pd.DataFrame(records, columns=[*with_axes(RUN_KEYS, rows), "warning"])


def warned_runs(rows: pd.DataFrame) -> pd.Series:
    """Per run (same index as ``rows``): True when it finished with at least one warning."""
    if "extra" not in rows:
        return pd.Series(False, index=rows.index)
    return rows["extra"].map(lambda extra: bool(isinstance(extra, dict) and extra.get("warnings")))


def format_warnings(rows: pd.DataFrame) -> str:
    """The stored warnings for a terminal, one line per (run, warning); empty when no run has one."""
    table = warning_table(rows)
    if table.empty:
        return ""
    runs = table.drop_duplicates(list(RUN_KEYS))
    lines = [f"{len(runs)} run(s) finished with warnings (their numbers may not mean what they seem):"]
    lines += [f"  {r.dataset} | {r.init} | {r.strategy} | {r.fraction * 100:g}% | seed {r.seed}: {r.warning}"
              for r in table.itertuples()]
    return "\n".join(lines)
