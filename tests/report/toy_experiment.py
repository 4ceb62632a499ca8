"""A small experiment written through the real ResultStore, with values known in advance.

Grid: dataset "toy" (3 classes, class 2 rare: 10 % of the training labels) x inits random, simclr x strategies
end_to_end, linear, range 0.25-0.5, truncate 0-0.75 x fractions 0.1, 1.0 x seeds 0, 1, 2. The run
(simclr, linear, 0.1, seed 2) failed. Every finished run leaves a Lightning-style metrics.csv.
"""

import itertools

import numpy as np
import pandas as pd

from medtransfer.bench.store import ResultStore, config_hash

INITS = ("random", "simclr")
STRATEGIES = {"end_to_end": {"name": "end_to_end"}, "linear": {"name": "linear"},
              "range 0.25-0.5": {"name": "range", "range": "0.25-0.5"},
              "truncate 0-0.75": {"name": "truncate", "keep": "0-0.75", "train": None}}
FRACTIONS = (0.1, 1.0)
SEEDS = (0, 1, 2)
FAILED = ("simclr", "linear", 0.1, 2)
OFFSET = {"end_to_end": 0.0, "linear": -0.1, "range 0.25-0.5": 0.02, "truncate 0-0.75": 0.01}


def auc_value(init: str, strategy: str, fraction: float, seed: int) -> float:
    """AUC of a run: init, strategy and fraction effects plus a seed term that differs between cells."""
    wobble = ((seed * 7 + INITS.index(init) * 3 + list(STRATEGIES).index(strategy)) % 5) * 0.01
    return 0.7 + 0.08 * (init == "simclr") + OFFSET[strategy] + 0.1 * (fraction == 1.0) + wobble


def write_experiment(folder, seeds=SEEDS, failed=FAILED) -> ResultStore:
    store = ResultStore(folder)
    for init, strategy, fraction, seed in itertools.product(INITS, STRATEGIES, FRACTIONS, seeds):
        labels = {"dataset": "toy", "init": init, "strategy": strategy, "fraction": fraction, "seed": seed}
        config = {"dataset": {"name": "toy"}, "init": {"kind": init}, "strategy": STRATEGIES[strategy],
                  "fraction": fraction, "seed": seed, "train": {"epochs": 3, "monitor": "auc"}}
        run_id = config_hash(config)
        store.start(run_id, config, labels)
        if (init, strategy, fraction, seed) == failed:
            store.fail(run_id, "RuntimeError: out of memory\nTraceback ...")
            continue
        auc = auc_value(init, strategy, fraction, seed)
        n = 100 if fraction == 1.0 else 10
        counts = [45, 45, 10] if fraction == 1.0 else [5, 4, 1]
        per_class = {"auc": [auc + 0.02, auc + 0.01, auc - 0.03]}
        store.finish(run_id, {"auc": auc, "acc": auc - 0.2}, per_class, {"auc": auc}, {"fit_s": 2.0, "test_s": 0.5},
                     extra={"class_counts": {"n": n, "per_class": counts}, "n_train": n, "best_epoch": 2,
                            "class_names": ["normal", "benign", "malignant"]})
        log = pd.DataFrame({"epoch": [0, 0, 1, 1, 2, 2], "step": [1, 1, 2, 2, 3, 3],
                            "train/loss": [1.0, np.nan, 0.6, np.nan, 0.4, np.nan],
                            "val/auc": [np.nan, auc - 0.1, np.nan, auc - 0.05, np.nan, auc]})
        log.to_csv(store.run_dir(run_id) / "metrics.csv", index=False)
    return store
