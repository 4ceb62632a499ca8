"""Expanding an experiment into runs and the run ids that key results: stable, complete, hardware-independent."""

import itertools
from pathlib import Path

import pytest

from medtransfer.bench.grid import dataset_labels, expand
from medtransfer.bench.store import ResultStore, config_hash
from medtransfer.config import ExperimentConfig
from medtransfer.config_files import load_config, validate_config
from medtransfer.data.normalisation import DEFAULT, IMAGENET, Normalisation
from medtransfer.pretrain.run import resolved_pretrain_config

SMALL = {"name": "synthetic2d", "n_train": 90, "n_val": 45, "n_test": 60, "size": 16}
BIG = {**SMALL, "size": 32}
GRID = {
    "name": "grid",
    "datasets": [SMALL, BIG],
    "backbone": {"name": "resnet_tiny"},
    "inits": ["random", {"checkpoint": "/ckpt/a.safetensors"}],
    "strategies": ["end_to_end", "linear", "q2"],
    "label_fractions": [0.1, 1.0],
    "seeds": [0, 1],
    "train": {"epochs": 1, "batch_size": 32},
}
SHA = {"random": None, "a": "a" * 64}


def cfg_of(**changes) -> ExperimentConfig:
    return validate_config({**GRID, **changes}, ExperimentConfig)


def ids_of(cfg, sha=SHA):
    return [spec.run_id(cfg, sha[spec.init.name]) for spec in expand(cfg)]


def test_expand_is_the_full_product_with_unique_ids():
    cfg = cfg_of()
    specs = expand(cfg)
    assert len(specs) == 2 * 2 * 3 * 2 * 2
    combos = {(s.dataset_label, s.init.name, s.strategy.label(), s.fraction, s.seed) for s in specs}
    expected = set(itertools.product(
        ["synthetic2d[n_test=60,n_train=90,n_val=45,size=16]", "synthetic2d[n_test=60,n_train=90,n_val=45,size=32]"],
        ["random", "a"], ["end_to_end", "linear", "range 0.25-0.5"], [0.1, 1.0], [0, 1]))
    assert combos == expected
    ids = ids_of(cfg)
    assert len(set(ids)) == len(ids) and all(len(i) == 64 for i in ids)


def test_expand_finishes_whole_seeds_first():
    specs = expand(cfg_of())
    half = len(specs) // 2
    assert {s.seed for s in specs[:half]} == {0} and {s.seed for s in specs[half:]} == {1}


def test_labels_match_the_store_columns():
    spec = expand(cfg_of(datasets=[SMALL]))[0]
    assert spec.labels() == {"dataset": "synthetic2d", "init": "random", "strategy": "end_to_end",
                             "fraction": 0.1, "seed": 0, "policy": "none"}


def test_run_id_is_stable_across_key_order():
    reordered = dict(reversed(list(GRID.items())))
    reordered["datasets"] = [dict(reversed(list(d.items()))) for d in GRID["datasets"]]
    reordered["train"] = {"batch_size": 32, "epochs": 1}
    assert ids_of(validate_config(reordered, ExperimentConfig)) == ids_of(cfg_of())
    assert ids_of(cfg_of()) == ids_of(cfg_of())  # and across validations


def _single(**changes):
    base = {**GRID, "datasets": [SMALL], "inits": ["random"], "strategies": ["end_to_end"],
            "label_fractions": [0.1], "seeds": [0]}
    cfg = validate_config({**base, **changes}, ExperimentConfig)
    (spec,) = expand(cfg)
    return spec, cfg


def _id(sha=None, **changes):
    spec, cfg = _single(**changes)
    return spec.run_id(cfg, sha)


@pytest.mark.parametrize("changes", [
    {"seeds": [1]},
    {"label_fractions": [0.5]},
    {"strategies": ["linear"]},
    {"strategies": ["q3"]},
    {"train": {"epochs": 2, "batch_size": 32}},
    {"train": {"epochs": 1, "batch_size": 32, "lr": 0.01}},
    {"datasets": [{**SMALL, "seed": 1}]},
    {"datasets": [{**SMALL, "resize": 32}]},
    {"backbone": {"name": "resnet_tiny", "small_stem": True}},
])
def test_run_id_changes_with_what_changes_a_result(changes):
    assert _id(**changes) != _id()


def test_run_id_changes_with_init_content():
    spec, cfg = _single(inits=[{"checkpoint": "/ckpt/a.safetensors"}])
    assert spec.run_id(cfg, "a" * 64) != spec.run_id(cfg, "b" * 64)
    assert spec.run_id(cfg, "a" * 64) != _id()  # a checkpoint is not a random init


def test_run_id_ignores_init_path_label_hardware_and_output():
    spec, cfg = _single(inits=[{"checkpoint": "/ckpt/a.safetensors"}])
    moved, moved_cfg = _single(inits=[{"label": "mine", "checkpoint": "/elsewhere/b.safetensors"}])
    assert spec.run_id(cfg, "a" * 64) == moved.run_id(moved_cfg, "a" * 64)  # same content, other file
    assert _id(hardware={"accelerator": "cpu", "devices": 2, "ddp": True, "precision": "bf16-mixed"}) == _id()
    assert _id(output="/somewhere/else") == _id()
    assert _id(name="renamed") == _id()


def test_run_id_same_run_in_a_bigger_grid():
    """Adding seeds or strategies to an experiment keeps the ids of the runs it already had."""
    small = set(ids_of(cfg_of(seeds=[0], strategies=["linear"])))
    big = set(ids_of(cfg_of()))
    assert small < big


def test_dataset_labels():
    assert dataset_labels(cfg_of(datasets=[SMALL]).datasets) == ["synthetic2d"]
    two = cfg_of(datasets=[SMALL, {"name": "synthetic3d"}, BIG]).datasets
    labels = dataset_labels(two)
    assert labels[1] == "synthetic3d"
    assert labels[0] != labels[2] and labels[0].startswith("synthetic2d[") and "size=16" in labels[0]
    assert "size=32" in labels[2]


def test_dataset_labels_tell_resize_apart():
    datasets = cfg_of(datasets=[{**SMALL, "resize": 32}, {**SMALL, "resize": 64}]).datasets
    labels = dataset_labels(datasets)
    assert len(set(labels)) == 2, labels
    specs = expand(cfg_of(datasets=[{**SMALL, "resize": 32}, {**SMALL, "resize": 64}]))
    assert len({s.dataset_label for s in specs}) == 2


def test_segmentation_settings_key_only_segmentation_runs_and_the_default_monitor_is_explicit():
    base, seg = cfg_of(), cfg_of(train={**GRID["train"], "segmentation": {"loss": "bce", "patch_size": 64}})
    assert ids_of(base) == ids_of(seg)  # classification runs: stored results stay valid
    assert ids_of(base) == ids_of(cfg_of(train={**GRID["train"], "monitor": "auc"}))
    spec = expand(base)[0]
    assert spec.run_id(base, None, segmentation=True) != spec.run_id(seg, None, segmentation=True)
    assert spec.resolved(base, None, segmentation=True)["train"]["monitor"] == "dice"


# Ids of the quickstart's first random and first SimCLR run (init sha256 "a" * 64) and the hash of its SimCLR
# pre-training, computed before inits carried their normalisation: stored results must still be found.
QUICKSTART_IDS = {"random": "66f80bbf049340cf3b103350f4ac0191e28127fee8a67a7279d7d9936d5e4742",
                  "simclr": "c5a5fcac4372a7b4a05e93030ed6a708966021103119bf38b09eb835eb9e613d"}
QUICKSTART_PRETRAIN_HASH = "ca3af667bfbf6c0e53f0a7d2bee3a0f1238eef2f557ea2eb1159a1a124ebdf14"
QUICKSTART_SHA = {"random": None, "simclr": "a" * 64}


def _quickstart():
    cfg = load_config(Path(__file__).parents[2] / "examples" / "quickstart.yaml", ExperimentConfig)
    firsts = {}
    for spec in expand(cfg):
        firsts.setdefault(spec.init.name, spec)
    return cfg, firsts


@pytest.mark.parametrize("normalisation", [DEFAULT, Normalisation((0.5,) * 3, (0.5,) * 3)])
def test_stored_quickstart_results_are_still_found(tmp_path, normalisation):
    """Random inits and inits whose statistics are 0.5 / 0.5 (e.g. timm's augreg ViTs) keep their run ids."""
    cfg, firsts = _quickstart()
    store = ResultStore(tmp_path)
    for name, run_id in QUICKSTART_IDS.items():
        store.start(run_id, {}, firsts[name].labels())
        store.finish(run_id, {"auc": 0.6}, {}, {}, {})
    for name, spec in firsts.items():
        run_id = spec.run_id(cfg, QUICKSTART_SHA[name], normalisation=normalisation)
        assert run_id == QUICKSTART_IDS[name] and store.status(run_id) == "done"
    assert config_hash(resolved_pretrain_config(cfg.inits[1].pretrain)) == QUICKSTART_PRETRAIN_HASH


def test_normalisation_is_stored_and_keys_the_run_only_when_it_is_not_the_default():
    spec, cfg = _single(inits=[{"checkpoint": "/ckpt/a.safetensors"}])
    plain, imagenet = (spec.run_id(cfg, "a" * 64, normalisation=n) for n in (DEFAULT, IMAGENET))
    assert imagenet != plain and imagenet != spec.run_id(cfg, "a" * 64, normalisation=IMAGENET.for_channels(1))
    assert spec.resolved(cfg, "a" * 64, normalisation=IMAGENET)["init"]["normalisation"] == IMAGENET.to_dict()
    assert spec.resolved(cfg, "a" * 64)["init"]["normalisation"] == {"mean": [0.5], "std": [0.5]}  # visible too


def test_runs_whose_epochs_now_keep_the_partial_batch_get_new_ids_the_others_keep_theirs():
    """batch 32: 90 images used to lose their last 26 each epoch, so such a run is another run now; 64 or 20
    images lost nothing, so their ids (and stored results) stay; knn never trains."""
    spec, cfg = _single()
    plain = spec.run_id(cfg, None)
    assert spec.run_id(cfg, None, n_train=64) == spec.run_id(cfg, None, n_train=20) == plain
    assert spec.run_id(cfg, None, n_train=90) != plain
    assert spec.resolved(cfg, None, n_train=90)["train"]["last_batch"] == "kept"
    knn, knn_cfg = _single(strategies=["knn"])
    assert knn.run_id(knn_cfg, None, n_train=90) == knn.run_id(knn_cfg, None)


def test_nearest_resizing_is_another_run_linear_keeps_the_ids_from_before_it_was_a_choice():
    spec, cfg = _single(datasets=[{**SMALL, "resize": 32}])
    near, near_cfg = _single(datasets=[{**SMALL, "resize": 32, "resize_mode": "nearest"}])
    assert "resize_mode" not in spec.resolved(cfg, None)["dataset"]
    assert near.resolved(near_cfg, None)["dataset"]["resize_mode"] == "nearest"
    assert near.run_id(near_cfg, None) != spec.run_id(cfg, None)


def test_run_ids_of_the_natural_ratio_are_the_stored_ones():
    """Pinned ids computed before the imbalance axis existed: stored results must still be found."""
    ids = ids_of(cfg_of())
    assert ids[0] == "d557759ea53cde32aa507beae4591e5ba5bf6134fee73a5c7919763f513d9ebf"
    assert ids[-1] == "e3ea63f3801e5e85e811f1b431b286dc9b2739924f7d7bfb57e6b1f0c176cfdd"
    assert ids_of(cfg_of(imbalance=[None])) == ids


def test_imbalance_axis_multiplies_the_grid_and_only_set_ratios_change_ids():
    plain = ids_of(cfg_of(datasets=[SMALL]))
    cfg = cfg_of(datasets=[SMALL], imbalance={"ratios": [None, 10], "mode": "resample"})
    specs = expand(cfg)
    assert len(specs) == 2 * len(plain)
    natural = [s.run_id(cfg, SHA[s.init.name]) for s in specs if s.imbalance is None]
    assert natural == plain
    at_10 = [s for s in specs if s.imbalance is not None]
    assert {s.labels()["dataset"] for s in at_10} == {"synthetic2d @ 10:1"}
    assert at_10[0].resolved(cfg, None)["imbalance"] == {"ratio": 10, "mode": "resample", "rare_class": None}
    resample_ids = {s.run_id(cfg, SHA[s.init.name]) for s in at_10}
    assert not resample_ids & set(plain)
    subsample = cfg_of(datasets=[SMALL], imbalance=[10])
    assert not resample_ids & set(ids_of(subsample))  # the mode is part of the run


def test_a_named_rare_class_keys_natural_runs_and_runs_without_one_keep_their_ids():
    """rare_class picks the class of a natural run's rare_ap/rare_recall, so it is part of the run; multi-label,
    segmentation and fusion runs compute no rare-class metric, so it leaves their ids alone."""
    plain = ids_of(cfg_of(datasets=[SMALL]))
    assert plain[0] == "d557759ea53cde32aa507beae4591e5ba5bf6134fee73a5c7919763f513d9ebf"  # pinned above
    cfgs = {rare: cfg_of(datasets=[SMALL], imbalance={"ratios": [None, 3], "rare_class": rare})
            for rare in (None, 1, "nodule")}
    natural = {rare: [s.run_id(cfg, SHA[s.init.name]) for s in expand(cfg) if s.imbalance is None]
               for rare, cfg in cfgs.items()}
    assert natural[None] == plain
    assert not set(natural[1]) & set(plain) and not set(natural["nodule"]) & set(natural[1])
    spec = next(s for s in expand(cfgs[1]) if s.imbalance is None)
    assert spec.resolved(cfgs[1], None)["imbalance"] == {"ratio": None, "rare_class": 1}
    for others in ({"segmentation": True}, {"label_names": ("a", "b")}):
        assert spec.run_id(cfgs[1], None, **others) == spec.run_id(cfgs[None], None, **others)
    inits = [{"label": "a", "checkpoint": "/c/a.safetensors"}, {"label": "f", "fuse": [{"label": "a"}] * 2}]
    fusions = [[(s, cfg) for s in expand(cfg) if s.init.fuse] for cfg in
               (cfg_of(inits=inits), cfg_of(inits=inits, imbalance={"rare_class": 1}))]
    assert [s.run_id(cfg, "f" * 64) for s, cfg in fusions[0]] == [s.run_id(cfg, "f" * 64) for s, cfg in fusions[1]]


def _csv_run(uncertain):
    return _single(datasets=[{"name": "csv", "root": "/data", "csv": "labels.csv", "label_columns": ["a", "b", "c"],
                              "uncertain": uncertain}])


def test_runs_that_trained_targets_of_minus_one_get_new_ids_the_other_policies_keep_theirs():
    """Ids pinned before the soft-target fix: a U-Ones/U-Zeros label after a smoothed one trained -1 then."""
    names = ("a", "b", "c")
    kept, kept_cfg = _csv_run({"a": "ones", "b": "zeros", "c": "smoothed_ones"})
    assert kept.run_id(kept_cfg, None, label_names=names) == (
        "a043691ee1387bc314d35e6d446d33a1b1ec92a6af019f7d7ee57af3d38b4d29")
    assert "soft_targets" not in kept.resolved(kept_cfg, None, label_names=names)["dataset"]
    fixed, fixed_cfg = _csv_run({"a": "smoothed_ones"})  # b and c default to zeros
    assert fixed.run_id(fixed_cfg, None, label_names=names) != (
        "c30679cd4c81edf60004613439a62e93e6a6bb8b0108019af57751ea40155c71")
    assert fixed.resolved(fixed_cfg, None, label_names=names)["dataset"]["soft_targets"] == "final_labels"


def test_frozen_strategies_on_nearest_data_get_new_ids_and_stay_one_experiment():
    """Ids pinned before the frozen-feature cache keyed the resize mode: a linear/knn/depth-range run on nearest data
    may have read features of linear resizes then, so it must not find its stored result; linear-resize data and
    end-to-end runs (which never read the cache) keep theirs, and the marker never splits one experiment."""
    import pandas as pd

    from medtransfer.report.integrity import differing_settings

    cfg = validate_config({"name": "x", "datasets": [{"name": "synthetic2d", "resize": 32},
                                                     {"name": "synthetic2d", "resize": 32, "resize_mode": "nearest"}],
                           "inits": ["random"], "strategies": ["end_to_end", "linear", "knn", "q2"]}, ExperimentConfig)
    ids = {(s.labels()["dataset"].endswith("nearest]"), s.strategy.name): s.run_id(cfg, "abc")[:16]
           for s in expand(cfg)}
    assert [ids[False, name] for name in ("end_to_end", "linear", "knn", "range")] == [
        "c3dcb6ed717d11d1", "3953a504accb4b55", "c65cffb673a4ea21", "b979566041fde97c"]
    assert ids[True, "end_to_end"] == "52d04a52d49e295d"
    old_nearest = {"linear": "ea2851b8d06d82c1", "knn": "e9eaec5ec8fc0fb1", "range": "82689586700c63f8"}
    assert all(ids[True, name] != old for name, old in old_nearest.items())
    rows = pd.DataFrame([{**s.labels(), "config": s.resolved(cfg, "abc")} for s in expand(cfg)])
    assert differing_settings(rows) == []
