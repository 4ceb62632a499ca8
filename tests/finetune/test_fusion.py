"""Fusion of several backbones: feature widths, frozen members, ensemble averaging, the cached linear fusion."""

import numpy as np
import pytest
import torch

from medtransfer.data.normalisation import DEFAULT, IMAGENET, UNIT_RANGE, Normalisation
from medtransfer.errors import ConfigError
from medtransfer.finetune import features as features_module
from medtransfer.finetune.fusion import FusionStrategy, FusionTuner, build_fusion, fine_tune_fusion, member_strategy
from medtransfer.finetune.strategies import parse_strategy
from medtransfer.models.backbones import owns
from medtransfer.models.fusion import FusionModel, ensemble_probabilities


@pytest.fixture(autouse=True)
def cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDTRANSFER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def strategies(*specs):
    return [parse_strategy(s) for s in specs]


def fuse(data, members, specs, cfg, cpu, workdir, how="concat", normalisations=None, **kw):
    return fine_tune_fusion(data, np.arange(len(data.train)), members, strategies(*specs),
                            normalisations or [DEFAULT] * len(members), how, 0.0, members[0].default_view, cfg, cpu,
                            0, workdir, **kw)


def test_concat_feature_width_is_the_sum_of_the_members(make_backbone, tiny2d):
    whole, cut = make_backbone(seed=0), make_backbone(seed=1)
    model = build_fusion([whole, cut], strategies("end_to_end", {"name": "truncate", "keep": "0-0.5"}),
                         [DEFAULT, IMAGENET.for_channels(tiny2d.in_chans)], tiny2d.num_classes, "concat", 0.0,
                         whole.default_view)
    assert cut.num_features < whole.num_features  # the truncated member really is narrower
    x = torch.rand(4, tiny2d.in_chans, *tiny2d.image_size)
    features = model.eval().features(x)
    assert model.num_features == whole.num_features + cut.num_features == features.shape[1]
    assert model.head.heads[0][1].in_features == model.num_features
    assert model(x).shape == (4, tiny2d.num_classes)


def test_each_member_is_fed_its_own_normalisation(make_backbone, tiny2d):
    a, b = make_backbone(seed=0), make_backbone(seed=1)
    grey = Normalisation((0.2,), (0.4,))
    model = FusionModel([a, b], [grey, UNIT_RANGE], tiny2d.num_classes).eval()
    x = torch.rand(2, tiny2d.in_chans, *tiny2d.image_size)
    expected = torch.cat([a((x - 0.2) / 0.4), b(x)], dim=1)
    torch.testing.assert_close(model.features(x), expected)


def test_ensemble_probabilities_are_the_hand_average_of_the_members():
    logits = torch.tensor([[[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]],
                           [[-1.0, 1.0, 0.0], [4.0, 0.0, 0.0]]])  # (members, batch, classes)
    by_hand = [np.exp(m) / np.exp(m).sum(axis=1, keepdims=True) for m in logits.numpy().astype(np.float64)]
    np.testing.assert_allclose(ensemble_probabilities(logits, "multiclass").numpy(), (by_hand[0] + by_hand[1]) / 2,
                               rtol=1e-6)
    sigmoid = 1 / (1 + np.exp(-logits.numpy().astype(np.float64)))
    np.testing.assert_allclose(ensemble_probabilities(logits, "multilabel").numpy(), sigmoid.mean(axis=0),
                               rtol=1e-6)


def test_ensemble_trains_on_the_sum_of_the_members_losses(make_backbone, fast_train):
    tuner = FusionTuner(torch.nn.Identity(), "multiclass", None, "stage", fast_train, torch.nn.Identity(),
                        how="ensemble")
    logits, y = torch.randn(3, 5, 4), torch.tensor([0, 1, 2, 3, 0])
    expected = sum(torch.nn.functional.cross_entropy(m, y) for m in logits)
    torch.testing.assert_close(tuner.loss(logits, y), expected)


@pytest.mark.parametrize("how", ["concat", "ensemble"])
def test_frozen_members_are_bit_identical_after_training(make_backbone, tiny2d, fast_train, cpu, tmp_path, how):
    frozen, ranged, trained = make_backbone(seed=0), make_backbone(seed=1), make_backbone(seed=2)
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in (frozen, ranged, trained)]
    result = fuse(tiny2d, [frozen, ranged, trained], ["linear", "q2", "end_to_end"], fast_train, cpu, tmp_path,
                  how=how)
    assert result.metrics["auc"] > 0
    assert all(torch.equal(v, frozen.state_dict()[k]) for k, v in before[0].items())  # BatchNorm stats included
    q2 = set(ranged.unit_prefixes(ranged.default_view)[1])
    in_q2 = lambda key: any(key == p or key.startswith(p + ".") for p in q2)  # noqa: E731
    after = ranged.model.state_dict()
    model_before = {k.removeprefix("model."): v for k, v in before[1].items()}
    assert all(torch.equal(v, after[k]) for k, v in model_before.items() if not in_q2(k))
    assert any(not torch.equal(v, after[k]) for k, v in model_before.items() if in_q2(k))
    assert any(not torch.equal(v, trained.state_dict()[k]) for k, v in before[2].items())
    widths = [m.num_features for m in (frozen, ranged, trained)]
    head_inputs = [sum(widths)] if how == "concat" else widths
    head = sum((w + 1) * tiny2d.num_classes for w in head_inputs)
    assert result.trainable_params == (sum(p.numel() for p in ranged.parameters() if p.requires_grad)
                                       + sum(p.numel() for p in trained.parameters()) + head)


@pytest.mark.parametrize("how", ["concat", "ensemble"])
def test_a_linear_fusion_trains_on_cached_member_features_with_the_per_epoch_result(
        make_backbone, tiny2d, fast_train, cpu, tmp_path, cache_root, monkeypatch, how):
    calls = []
    real = features_module.extract
    monkeypatch.setattr(features_module, "extract", lambda *a, **k: calls.append(1) or real(*a, **k))
    norms = [DEFAULT, IMAGENET.for_channels(tiny2d.in_chans)]
    per_epoch = fuse(tiny2d, [make_backbone(seed=0), make_backbone(seed=1)], ["linear", "linear"], fast_train, cpu,
                     tmp_path / "a", how=how, normalisations=norms, frozen_features=False)
    assert calls == []
    cached = fuse(tiny2d, [make_backbone(seed=0), make_backbone(seed=1)], ["linear", "linear"], fast_train, cpu,
                  tmp_path / "b", how=how, normalisations=norms)
    assert calls == [1, 1] and len(list((cache_root / "features").iterdir())) == 2  # one entry per member
    np.testing.assert_allclose(cached.predictions["scores"], per_epoch.predictions["scores"], atol=1e-5)
    assert cached.metrics == pytest.approx(per_epoch.metrics, abs=1e-6)
    assert "features_s" in cached.timings
    fuse(tiny2d, [make_backbone(seed=0), make_backbone(seed=1)], ["linear", "linear"], fast_train, cpu,
         tmp_path / "c", how=how, normalisations=norms)
    assert calls == [1, 1]  # the second fusion of the same members reads the cache


@pytest.mark.parametrize("specs", [["end_to_end", "end_to_end"], ["linear", "linear"]])
def test_a_fusion_resizes_its_members_input_by_the_resize_mode(make_backbone, tiny2d, fast_train, cpu, tmp_path,
                                                                specs):
    """Images 16 -> 24 by nearest feed every member other pixels than linearly, on images and on cached features."""
    one_epoch = fast_train.model_copy(update={"epochs": 1})

    def at(mode, workdir, **kw):
        return fuse(tiny2d, [make_backbone(seed=0), make_backbone(seed=1)], specs, one_epoch, cpu, tmp_path / workdir,
                    input_size=(24, 24), resize_mode=mode, **kw).predictions["scores"]
    linear, nearest = at("linear", "a"), at("nearest", "b")
    assert np.abs(nearest - linear).max() > 1e-3
    # linear members: the cached features are the nearest-resized images' (the per-epoch path's result)
    np.testing.assert_allclose(nearest, at("nearest", "c", frozen_features=False), atol=1e-5)


def test_each_member_gets_the_optimiser_groups_its_own_strategy_makes(make_backbone, tiny2d):
    frozen, decayed = make_backbone(seed=0), make_backbone(seed=1)
    specs = strategies("linear", {"name": "lwlr_decay", "decay": 0.5})
    model = build_fusion([frozen, decayed], specs, [DEFAULT, DEFAULT], tiny2d.num_classes, "concat", 0.0, "stage")
    groups = FusionStrategy(specs).param_groups(model, 1.0, "stage")
    grouped = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert not any(id(p) in grouped for p in frozen.parameters())
    n = len(decayed.view("stage"))
    for i, prefixes in enumerate(decayed.unit_prefixes("stage")):
        unit = [p for name, p in decayed.model.named_parameters() if any(owns(x, name) for x in prefixes)]
        assert unit and all(grouped[id(p)] == 0.5 ** (n - i) for p in unit)
    assert all(grouped[id(p)] == 1.0 for p in model.head.parameters())
    assert len(grouped) == sum(1 for g in groups for _ in g["params"])  # no parameter twice


@pytest.mark.parametrize("spec", ["warmup", "knn"])
def test_a_strategy_that_cannot_act_inside_a_fusion_is_refused_by_name(spec):
    with pytest.raises(ConfigError, match=f"strategy '{spec}.*cannot train a fusion member.*allowed"):
        member_strategy(spec)
