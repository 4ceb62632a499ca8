"""Each recommender signal against a value computed by hand on a tiny model or fixed features."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.preprocessing import StandardScaler

from medtransfer.config import TrainConfig
from medtransfer.data.transforms import Preprocess
from medtransfer.finetune.module import FineTuner
from medtransfer.finetune.strategies.end_to_end import EndToEnd
from medtransfer.models.factory import create_backbone
from medtransfer.models.heads import Classifier
from medtransfer.recommend.features import unit_features
from medtransfer.recommend.probe import MAX_ITER, probe_score
from medtransfer.recommend.rgn import batch_order, gradient_profile
from medtransfer.recommend.shift import linear_cka, unit_shifts

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_module(seed=0):
    torch.manual_seed(seed)
    backbone = create_backbone("resnet_tiny", 1, (16, 16), False)
    model = Classifier(backbone, 3)
    return FineTuner(model, "multiclass", EndToEnd(), "stage", TrainConfig(), Preprocess(2, size=(16, 16)))


def fixed_batch(n=10):
    rng = np.random.default_rng(1)
    return (torch.from_numpy(rng.integers(0, 256, (n, 1, 16, 16), dtype=np.uint8)),
            torch.from_numpy(rng.integers(0, 3, n)).long())


def hand_rgn(model, view="stage"):
    """||g_u|| / ||w_u|| with every parameter of a unit flattened into one vector, found by name prefix."""
    names = model.backbone.unit_parameter_names(view)
    params = dict(model.backbone.model.named_parameters())
    out = []
    for unit in names:
        g = torch.cat([params[n].grad.flatten() for n in unit])
        w = torch.cat([params[n].detach().flatten() for n in unit])
        out.append((g.norm() / w.norm()).item())
    return np.array(out)


def test_rgn_is_the_mean_over_steps_of_gradient_over_weight_norms_per_unit():
    images, labels = fixed_batch()
    module = tiny_module()
    reference = copy.deepcopy(module.model)
    profile = gradient_profile(module, "stage", images, labels, lr=1e-2, batch_size=4, steps=2, seed=3)

    optimizer = torch.optim.AdamW(reference.parameters(), lr=1e-2)
    reference.train()
    per_step = []
    for positions in batch_order(len(images), 4, 2, 3):
        idx = torch.from_numpy(positions)
        x = images[idx].float() / 255.0
        x = (x - 0.5) / 0.5  # the default normalisation, no augmentation
        loss = F.cross_entropy(reference(x), labels[idx])
        optimizer.zero_grad()
        loss.backward()
        per_step.append(hand_rgn(reference))
        optimizer.step()
    assert profile.steps == 2 and not profile.stopped_early
    np.testing.assert_allclose(profile.rgn, np.mean(per_step, axis=0), rtol=1e-5)
    assert not np.allclose(per_step[0], per_step[1])  # the second step saw moved weights: a real mean was taken


def test_gradient_profile_stops_when_asked_after_at_least_one_step():
    images, labels = fixed_batch()
    asked = []
    profile = gradient_profile(tiny_module(), "stage", images, labels, lr=1e-3, batch_size=4, steps=50, seed=0,
                               stop=lambda per_step: asked.append(per_step) or len(asked) >= 3)
    assert profile.steps == 3 and profile.stopped_early and profile.seconds_per_step > 0


def test_batches_are_seeded_permutations_of_the_subset():
    batches = batch_order(5, 4, 3, seed=7)
    stream = np.concatenate(batches)
    assert [len(b) for b in batches] == [4, 4, 4]
    assert sorted(stream[:5]) == list(range(5)) and sorted(stream[5:10]) == list(range(5))
    np.testing.assert_array_equal(stream, np.concatenate(batch_order(5, 4, 3, seed=7)))


def test_cka_of_identical_features_is_one_and_invariant_to_rotation_and_scale():
    x = np.random.default_rng(0).normal(size=(50, 6))
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(6, 6)))
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, 3.0 * x @ q) == pytest.approx(1.0)


def test_cka_of_a_known_pair_equals_the_formula():
    x = np.array([[1.0], [2.0], [3.0], [4.0]])
    y = x ** 2
    # one feature each: linear CKA is the squared Pearson correlation
    assert linear_cka(x, y) == pytest.approx(np.corrcoef(x[:, 0], y[:, 0])[0, 1] ** 2)
    a = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    b = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    assert linear_cka(a, b) == pytest.approx(0.0)
    assert unit_shifts([x, a], [y, b]) == pytest.approx([1 - np.corrcoef(x[:, 0], y[:, 0])[0, 1] ** 2, 1.0])


def test_probe_score_equals_sklearn_fit_and_auc_by_hand():
    rng = np.random.default_rng(0)
    train_y, val_y = rng.integers(0, 2, 40), rng.integers(0, 2, 30)
    train_x = rng.normal(size=(40, 5)) + train_y[:, None] * [1.0, 0, 0, 0, 0]
    val_x = rng.normal(size=(30, 5)) + val_y[:, None] * [1.0, 0, 0, 0, 0]
    scaler = StandardScaler().fit(train_x)
    model = LogisticRegression(max_iter=MAX_ITER, random_state=0).fit(scaler.transform(train_x), train_y)
    expected = roc_auc_score(val_y, model.predict_proba(scaler.transform(val_x))[:, 1])
    got = probe_score(train_x, train_y, val_x, val_y, "binary", 2, "auc", seed=0)
    assert got == pytest.approx(expected) and got > 0.6
    loss = log_loss(val_y, model.predict_proba(scaler.transform(val_x)))  # the monitor "loss": cross-entropy
    assert probe_score(train_x, train_y, val_x, val_y, "binary", 2, "loss", seed=0) == pytest.approx(loss)


def test_probe_keeps_a_class_missing_from_the_subset_in_its_column():
    rng = np.random.default_rng(0)
    train_y = np.array([0, 2] * 10)  # class 1 has no labelled example
    train_x = rng.normal(size=(20, 3)) + train_y[:, None]
    val_y = np.array([0, 1, 2] * 5)
    val_x = rng.normal(size=(15, 3)) + val_y[:, None]
    acc = probe_score(train_x, train_y, val_x, val_y, "multiclass", 3, "acc", seed=0)
    assert 0 < acc <= 2 / 3  # class 1 is never predicted, and the score is computed on all three columns


def test_unit_features_end_with_the_backbones_own_pooled_output():
    module = tiny_module()
    backbone = module.model.backbone.eval()
    images, _ = fixed_batch(6)
    seconds = np.zeros(4)
    feats = unit_features(backbone, images.numpy(), Preprocess(2, size=(16, 16)), "stage", seconds)
    assert [f.shape for f in feats] == [(6, c) for c in (backbone.step_channels[g[-1]]
                                                         for g in backbone.view("stage"))]
    with torch.no_grad():
        pooled = backbone((images.float() / 255.0 - 0.5) / 0.5)
    np.testing.assert_allclose(feats[-1], pooled.numpy(), rtol=1e-5, atol=1e-6)
    assert (seconds > 0).all()


def test_multilabel_probe_is_one_logistic_regression_per_label_scored_by_mean_auc():
    rng = np.random.default_rng(2)
    train_y, val_y = rng.integers(0, 2, (40, 3)), rng.integers(0, 2, (30, 3))
    train_x, val_x = rng.normal(size=(40, 4)) + train_y @ np.eye(3, 4), rng.normal(size=(30, 4)) + val_y @ np.eye(3, 4)
    scaler = StandardScaler().fit(train_x)
    aucs = [roc_auc_score(val_y[:, k], LogisticRegression(max_iter=MAX_ITER, random_state=0)
                          .fit(scaler.transform(train_x), train_y[:, k]).predict_proba(scaler.transform(val_x))[:, 1])
            for k in range(3)]
    got = probe_score(train_x, train_y, val_x, val_y, "multilabel", 3, "auc", seed=0)
    assert got == pytest.approx(np.mean(aucs))


def test_a_vits_last_unit_is_read_as_its_head_reads_it():
    torch.manual_seed(0)
    backbone = create_backbone("vit_micro", 1, (16, 16), False).eval()
    images, _ = fixed_batch(4)
    feats = unit_features(backbone, images.numpy(), Preprocess(2, size=(16, 16)), "block")
    with torch.no_grad():
        pooled = backbone((images.float() / 255.0 - 0.5) / 0.5)
    np.testing.assert_allclose(feats[-1], pooled.numpy(), rtol=1e-5, atol=1e-6)
    assert feats[0].shape == (4, 32)  # earlier units: patch tokens averaged
