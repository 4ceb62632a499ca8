"""Frozen backbones (linear, knn) run once over the images: cached features give the per-epoch path's result."""

import json

import numpy as np
import pytest

from medtransfer.config import HardwareConfig
from medtransfer.errors import ConfigError
from medtransfer.finetune import features as features_module
from medtransfer.finetune.strategies import parse_strategy
from medtransfer.finetune.train import fine_tune


@pytest.fixture(autouse=True)
def cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDTRANSFER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def count_extractions(monkeypatch):
    calls = []
    real = features_module.extract

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)
    monkeypatch.setattr(features_module, "extract", counted)
    return calls


def run(data, backbone, cfg, cpu, workdir, strategy="linear", seed=0, **kw):
    return fine_tune(data, np.arange(len(data.train)), backbone, parse_strategy(strategy), backbone.default_view,
                     cfg, cpu, seed, workdir, **kw)


def test_linear_on_cached_features_equals_the_per_epoch_run(tiny2d, make_backbone, fast_train, cpu, tmp_path,
                                                            count_extractions):
    cfg = fast_train.model_copy(update={"dropout": 0.3, "epochs": 3})  # dropout: the RNG must line up too
    per_epoch = run(tiny2d, make_backbone(seed=4), cfg, cpu, tmp_path / "a", seed=4, frozen_features=False)
    assert count_extractions == []
    backbone = make_backbone(seed=4)
    running_means = [m.running_mean.clone() for m in backbone.modules() if hasattr(m, "running_mean")]
    cached = run(tiny2d, backbone, cfg, cpu, tmp_path / "b", seed=4)
    assert count_extractions == [1]
    np.testing.assert_allclose(cached.predictions["scores"], per_epoch.predictions["scores"], atol=1e-5)
    assert cached.metrics == pytest.approx(per_epoch.metrics, abs=1e-6)
    assert cached.val_metrics == pytest.approx(per_epoch.val_metrics, abs=1e-5)
    assert (cached.best_epoch, cached.epochs_run) == (per_epoch.best_epoch, per_epoch.epochs_run)
    assert (cached.trainable_params, cached.total_params) == (per_epoch.trainable_params, per_epoch.total_params)
    assert "features_s" in cached.timings and "features_s" not in per_epoch.timings
    # frozen BatchNorm: extraction normalised with, and left unchanged, the running statistics
    after = [m.running_mean for m in backbone.modules() if hasattr(m, "running_mean")]
    assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(running_means, after))


def test_features_are_extracted_once_per_weights_and_normalisation(tiny2d, make_backbone, fast_train, cpu, tmp_path,
                                                                   cache_root, count_extractions):
    one_epoch = fast_train.model_copy(update={"epochs": 1})
    first = run(tiny2d, make_backbone(seed=0), one_epoch, cpu, tmp_path / "a")
    again = run(tiny2d, make_backbone(seed=0), one_epoch, cpu, tmp_path / "b", strategy="knn")
    assert count_extractions == [1]  # the same init over the same images: the cache serves linear and knn alike
    entries = list((cache_root / "features").iterdir())
    assert [sorted(p.name for p in e.iterdir()) for e in entries] == [["meta.json", "test.npy", "train.npy",
                                                                     "val.npy"]]
    assert first.metrics and again.metrics
    run(tiny2d, make_backbone(seed=1), one_epoch, cpu, tmp_path / "c")  # another random init: other features
    assert count_extractions == [1, 1]
    assert len(list((cache_root / "features").iterdir())) == 2  # no temporary folder is left behind


def test_feature_key_follows_mean_std_input_size_resize_mode_and_images(tiny2d, make_backbone):
    from medtransfer.data.normalisation import Normalisation
    from medtransfer.data.transforms import Preprocess
    from medtransfer.finetune.features import FeatureSpec, feature_key
    backbone = make_backbone()

    def key(data=tiny2d, mean=0.5, std=0.5, resize_mode="linear", meta=False):
        pre = Preprocess(2, normalisation=Normalisation((mean,), (std,)), resize_mode=resize_mode)
        spec = FeatureSpec.of(pre, data.image_size, "stage", "32-true", False)
        return feature_key(backbone, data, spec)[meta]
    import dataclasses
    from medtransfer.data.base import Split
    flipped = dataclasses.replace(tiny2d, test=Split(tiny2d.test.images[..., ::-1].copy(), tiny2d.test.labels))
    keys = {key(), key(mean=0.4), key(std=0.25), key(data=flipped), key(resize_mode="nearest")}
    assert len(keys) == 5 and key() == key()
    assert "resize_mode" not in key(meta=True)  # linear: the key it had before there was a choice (entries stay)
    assert key(resize_mode="nearest", meta=True)["resize_mode"] == "nearest"


def test_a_nearest_run_after_a_linear_one_gets_nearest_features(tiny2d, make_backbone, fast_train, cpu, tmp_path,
                                                               cache_root, count_extractions):
    """Same images, same weights: resized 16 -> 24 by nearest they are other features than resized linearly."""
    one_epoch, size = fast_train.model_copy(update={"epochs": 1}), (24, 24)
    linear = run(tiny2d, make_backbone(), one_epoch, cpu, tmp_path / "a", input_size=size)
    nearest = run(tiny2d, make_backbone(), one_epoch, cpu, tmp_path / "b", input_size=size, resize_mode="nearest")
    assert count_extractions == [1, 1]
    per_epoch = run(tiny2d, make_backbone(), one_epoch, cpu, tmp_path / "c", input_size=size, resize_mode="nearest",
                    frozen_features=False)
    np.testing.assert_allclose(nearest.predictions["scores"], per_epoch.predictions["scores"], atol=1e-5)
    assert np.abs(nearest.predictions["scores"] - linear.predictions["scores"]).max() > 1e-3
    metas = [json.loads((entry / "meta.json").read_text()) for entry in (cache_root / "features").iterdir()]
    assert sorted(m.get("resize_mode", "linear") for m in metas) == ["linear", "nearest"]


def test_augmented_linear_runs_keep_the_per_epoch_path_and_say_so(tiny2d, make_backbone, fast_train, cpu, tmp_path,
                                                                   count_extractions, caplog):
    with caplog.at_level("INFO", logger="medtransfer.finetune.frozen"):
        run(tiny2d, make_backbone(), fast_train.model_copy(update={"augment": "flip", "epochs": 1}), cpu, tmp_path)
    assert count_extractions == []
    assert "linear: the frozen backbone runs every epoch: train.augment: flip" in caplog.text


def test_a_depth_range_trains_on_its_cached_frozen_prefix_with_the_per_epoch_result(tiny2d, make_backbone, cpu,
                                                                                    fast_train, tmp_path,
                                                                                    count_extractions):
    cfg = fast_train.model_copy(update={"dropout": 0.3})
    per_epoch = run(tiny2d, make_backbone(seed=2), cfg, cpu, tmp_path / "a", strategy="q3", seed=2,
                    frozen_features=False)
    assert count_extractions == []
    cached = run(tiny2d, make_backbone(seed=2), cfg, cpu, tmp_path / "b", strategy="q3", seed=2)
    assert count_extractions == [1]
    np.testing.assert_allclose(cached.predictions["scores"], per_epoch.predictions["scores"], atol=1e-5)
    assert cached.metrics == pytest.approx(per_epoch.metrics, abs=1e-6)
    assert cached.best_epoch == per_epoch.best_epoch
    assert cached.trainable_params == per_epoch.trainable_params > 0


def test_a_prefix_over_the_memory_limit_or_a_changing_freeze_keeps_the_per_epoch_path(
        tiny2d, make_backbone, fast_train, cpu, tmp_path, count_extractions, caplog, monkeypatch):
    from medtransfer.finetune import frozen
    one_epoch = fast_train.model_copy(update={"epochs": 1})
    monkeypatch.setattr(frozen, "MAX_PREFIX_BYTES", 1024)
    with caplog.at_level("INFO", logger="medtransfer.finetune.frozen"):
        run(tiny2d, make_backbone(), one_epoch, cpu, tmp_path / "a", strategy="q2")
    assert "range 0.25-0.5: the frozen prefix (layer1.0 and below) runs every epoch" in caplog.text
    assert "GiB limit" in caplog.text
    run(tiny2d, make_backbone(), one_epoch, cpu, tmp_path / "b", strategy={"name": "warmup", "frozen_epochs": 1})
    run(tiny2d, make_backbone(), one_epoch, cpu, tmp_path / "c", strategy="end_to_end")
    assert count_extractions == []


def test_an_entry_stored_by_another_process_first_is_kept(tmp_path):
    from medtransfer.finetune.features import _store
    folder = tmp_path / "features" / "key"
    _store(folder, {"train": np.ones((2, 3), np.float32)}, {"who": "first"})
    _store(folder, {"train": np.zeros((2, 3), np.float32)}, {"who": "second"})
    assert np.load(folder / "train.npy").sum() == 6
    assert sorted(p.name for p in folder.parent.iterdir()) == ["key"]


def test_knn_votes_match_a_hand_computed_vote():
    knn = parse_strategy({"name": "knn", "k": 2, "temperature": 0.5})
    reference = np.array([[1, 0], [0, 1], [1, 1], [-1, 0]], np.float32)  # cosine to the query [2, 0]: 1, 0, .707, -1
    labels = np.array([0, 1, 1, 2])
    scores = knn.scores(reference, labels, np.array([[2, 0]], np.float32), "multiclass", 3)
    w_class0, w_class1 = np.exp(1 / 0.5), np.exp(np.sqrt(0.5) / 0.5)  # the two nearest: [1, 0] and [1, 1]
    expected = np.array([w_class0, w_class1, 0]) / (w_class0 + w_class1)
    np.testing.assert_allclose(scores[0], expected, rtol=1e-5)


def test_knn_multilabel_votes_per_label_and_skips_unknown_labels():
    knn = parse_strategy({"name": "knn", "k": 3, "temperature": 1.0})
    reference = np.array([[1, 0], [1, 1], [0, 1]], np.float32)
    targets = np.array([[1, 0], [0, np.nan], [1, 1]], np.float32)  # neighbour 2's second label is unknown
    scores = knn.scores(reference, targets, np.array([[1, 0]], np.float32), "multilabel", 2)
    w = np.exp(np.array([1, np.sqrt(0.5), 0]) - 1)
    np.testing.assert_allclose(scores[0], [(w[0] + w[2]) / w.sum(), w[2] / (w[0] + w[2])], rtol=1e-5)


def test_knn_run_scores_val_and_test_without_training(tiny2d, make_backbone, fast_train, cpu, tmp_path):
    result = run(tiny2d, make_backbone(), fast_train, cpu, tmp_path, strategy={"name": "knn", "k": 5})
    scores = result.predictions["scores"]
    assert scores.shape == (len(tiny2d.test), tiny2d.num_classes)
    np.testing.assert_allclose(scores.sum(1), 1, rtol=1e-5)
    assert np.array_equal(result.predictions["y_true"], tiny2d.test.labels)
    assert 0 <= result.metrics["auc"] <= 1 and "auc" in result.val_metrics
    assert result.trainable_params == 0 and result.epochs_run == 0


@pytest.mark.parametrize("spec, key", [({"name": "knn", "k": 0}, "k"), ({"name": "knn", "temperature": 0}, "temperature"),
                                       ({"name": "knn", "neighbours": 3}, "neighbours")])
def test_knn_options_are_validated(spec, key):
    with pytest.raises(ConfigError, match=f"knn.*{key}"):
        parse_strategy(spec)


def test_knn_under_ddp_is_refused_before_any_work(tiny2d, make_backbone, fast_train, tmp_path):
    with pytest.raises(ConfigError, match="ddp"):
        run(tiny2d, make_backbone(), fast_train, HardwareConfig(accelerator="cpu", ddp=True), tmp_path,
            strategy="knn")


def test_knn_on_a_segmentation_task_is_refused(make_backbone, fast_train):
    from medtransfer.data.synthetic_seg import synthetic_seg2d
    from medtransfer.finetune.segmentation import build_segmentation
    data = synthetic_seg2d(size=16, n_train=4, n_val=2, n_test=2)
    with pytest.raises(ConfigError, match="knn.*segmentation"):
        build_segmentation(data, make_backbone(), parse_strategy("knn"), "stage", fast_train, "dice", False)


def test_linear_and_knn_in_a_grid_share_one_extraction_and_store_results(tmp_path, cache_root, count_extractions):
    from medtransfer.bench.runner import run_experiment
    from medtransfer.bench.store import ResultStore
    from medtransfer.config import ExperimentConfig
    from medtransfer.config_files import validate_config
    grid = {"name": "frozen", "datasets": [{"name": "synthetic2d", "n_train": 60, "n_val": 30, "n_test": 30,
                                            "size": 16}],
            "backbone": {"name": "resnet_tiny"}, "inits": ["random"], "strategies": ["linear", "knn"],
            "label_fractions": [1.0], "seeds": [0], "train": {"epochs": 1, "batch_size": 32},
            "hardware": {"accelerator": "cpu"}}
    summary = run_experiment(validate_config(grid, ExperimentConfig), tmp_path / "runs", progress=False)
    assert (summary.done, summary.failed) == (2, [])
    rows = ResultStore(tmp_path / "runs").rows()
    assert sorted(rows["strategy"]) == ["knn k=20 T=0.07", "linear"]
    assert rows["metric.auc"].between(0, 1).all()
    assert count_extractions == [1]
    with pytest.raises(ConfigError, match="ddp"):  # refused while preparing, before any run
        run_experiment(validate_config({**grid, "hardware": {"accelerator": "cpu", "ddp": True}}, ExperimentConfig),
                       tmp_path / "ddp", progress=False)
