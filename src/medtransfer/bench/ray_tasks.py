"""What a Ray worker executes: one pre-training, or one fine-tuning run, from configs alone.

A task receives configs and paths, never datasets: the worker loads its dataset itself (cheap with a dataset cache),
so nothing large is pickled per task. It writes the run's files into the run folder and returns the numbers; the
driver alone writes the results database.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from medtransfer.bench.claims import pretraining_lock
from medtransfer.bench.executors import torch_threads
from medtransfer.bench.grid import RunSpec
from medtransfer.bench.runner import Prepared, dataset_input_size, quiet_lightning, run_extra, run_one
from medtransfer.bench.store import write_predictions
from medtransfer.config import ExperimentConfig, PretrainConfig
from medtransfer.data import label_fraction_indices, load_dataset
from medtransfer.data.normalisation import Normalisation
from medtransfer.pretrain.run import pretrain

WORKER_FILE = "worker.json"


def pretrain_task(pcfg: PretrainConfig, output: str, threads: int, verbose: bool) -> str:
    """Pre-train (or reuse a finished pre-training) in ``output``; returns the checkpoint's path."""
    if not verbose:
        quiet_lightning()
    with torch_threads(threads), pretraining_lock(Path(output)):
        return str(pretrain(pcfg, Path(output), verbose=verbose))


def train_task(cfg: ExperimentConfig, spec: RunSpec, init_files: dict[str, str | None],
               normalisations: dict[str, Normalisation], run_dir: str, verbose: bool) -> dict:
    """Fine-tune one run into ``run_dir`` (predictions included); returns what the driver stores. ``init_files`` and
    ``normalisations`` (per channel of the weights) hold every init the run reads (``grid.inits_read``): its own
    and, for a fusion, each member's."""
    run_dir = Path(run_dir)
    # where the run trains (host and process), so a stuck or crashed run can be traced to its worker
    (run_dir / WORKER_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
    if not verbose:
        quiet_lightning()
    data = load_dataset(spec.dataset.name, **spec.dataset.options)
    label = spec.dataset_label
    prepared = Prepared(
        data={label: data}, input_size={label: dataset_input_size(cfg, spec.dataset, data)},
        subsets={(label, spec.fraction, spec.seed): label_fraction_indices(data.train.labels, data.task,
                                                                            spec.fraction, spec.seed)},
        init_files={name: None if path is None else Path(path) for name, path in init_files.items()},
        init_normalisation=dict(normalisations))
    result, indices = run_one(cfg, spec, prepared, run_dir, verbose)
    write_predictions(run_dir, **result.predictions)
    return {"metrics": result.metrics, "per_class": result.per_class, "val_metrics": result.val_metrics,
            "timings": result.timings, "extra": run_extra(result, indices, data, prepared.init_files[spec.init.name])}
