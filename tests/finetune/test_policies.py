"""Training policies: each changes what it claims (loss, weights, sampling, mixing, augmentation) and nothing else."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight

from medtransfer.data.transforms import Preprocess, SegmentationPreprocess
from medtransfer.errors import ConfigError
from medtransfer.finetune.policies import NO_POLICY, parse_policies, parse_policy

LOGITS = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [-1.0, 3.0, 0.0], [0.0, 0.0, 4.0], [1.0, -2.0, 0.5]])
Y = torch.tensor([0, 2, 1, 0, 1])
LABELS = np.array([0] * 60 + [1] * 30 + [2] * 10)


def criterion(spec, labels=LABELS):
    """The training loss an entry gives a 3-class task whose training subset has ``labels``."""
    return parse_policy(spec).criterion("multiclass", labels, 3)


def test_no_policy_is_plain_cross_entropy_and_changes_nothing():
    assert NO_POLICY.label() == "none" and NO_POLICY.is_none and not NO_POLICY.changes_images
    assert criterion("none") is None and criterion({"augment": "strong"}) is None  # the task's own loss
    assert NO_POLICY.mix(LOGITS, Y) is None and NO_POLICY.augment("light") == "light"
    assert NO_POLICY.sampler(LABELS, 10, torch.Generator()) is None


def test_label_smoothing_changes_the_loss_by_the_closed_form_amount():
    eps = 0.1
    log_p = torch.log_softmax(LOGITS, 1)
    plain = F.cross_entropy(LOGITS, Y)
    uniform = -log_p.mean(1).mean()  # cross-entropy against the uniform target
    smoothed = criterion({"label_smoothing": eps})(LOGITS, Y)
    assert smoothed.item() == pytest.approx(((1 - eps) * plain + eps * uniform).item(), rel=1e-6)
    assert smoothed.item() - plain.item() == pytest.approx(eps * (uniform - plain).item(), rel=1e-5)


def test_class_weights_equal_sklearn_and_inverse_sqrt_is_milder():
    balanced = criterion({"class_weights": "balanced"}).weight.numpy()
    np.testing.assert_allclose(balanced, compute_class_weight("balanced", classes=np.arange(3), y=LABELS), rtol=1e-6)
    root = criterion({"class_weights": "inverse_sqrt"}).weight.numpy()
    counts = np.bincount(LABELS)
    assert (root * counts).sum() == pytest.approx(len(LABELS))  # same total weight as balanced
    assert root[2] / root[0] == pytest.approx(math.sqrt(60 / 10))  # ∝ 1/√n_c, milder than balanced's 6
    weighted = criterion({"class_weights": "balanced"})(LOGITS, Y)
    assert weighted.item() == pytest.approx(F.cross_entropy(LOGITS, Y, weight=torch.tensor(balanced)).item())


def test_focal_loss_equals_its_formula_on_fixed_logits():
    p_true = torch.softmax(LOGITS, 1)[torch.arange(len(Y)), Y]
    expected = ((1 - p_true) ** 2 * -torch.log(p_true)).mean()
    focal = criterion({"focal": 2})(LOGITS, Y)
    assert focal.item() == pytest.approx(expected.item(), rel=1e-6)
    assert focal < F.cross_entropy(LOGITS, Y)


def test_loss_policies_compose_in_one_entry():
    loss = criterion({"label_smoothing": 0.1, "class_weights": "balanced"})
    weight = torch.tensor(compute_class_weight("balanced", classes=np.arange(3), y=LABELS), dtype=torch.float32)
    assert loss(LOGITS, Y).item() == pytest.approx(
        F.cross_entropy(LOGITS, Y, weight=weight, label_smoothing=0.1).item(), rel=1e-6)


def _numbered(n, shape):
    """Images whose every pixel holds the image's index, so where each pixel came from can be read back."""
    return torch.arange(n, dtype=torch.float32).view(n, *[1] * len(shape)).expand(n, *shape).clone()


def test_mixup_blends_with_the_seeded_lambda_and_mixes_the_labels_alike():
    x, y = _numbered(8, (1, 6, 6)), torch.arange(8) * 10
    torch.manual_seed(5)
    mixed = parse_policy({"mixup": 0.4}).mix(x, y)
    torch.manual_seed(5)
    assert mixed.lam == pytest.approx(float(torch.distributions.Beta(0.4, 0.4).sample()))
    partner = mixed.partner_y // 10
    expected = mixed.lam * torch.arange(8.0) + (1 - mixed.lam) * partner.float()
    torch.testing.assert_close(mixed.x[:, 0, 0, 0], expected)
    assert sorted(partner.tolist()) == list(range(8))  # a permutation of the batch
    torch.manual_seed(5)
    again = parse_policy({"mixup": 0.4}).mix(x, y)
    assert again.lam == mixed.lam and torch.equal(again.x, mixed.x)


@pytest.mark.parametrize("shape", [(1, 16, 16), (1, 8, 8, 8)])
def test_cutmix_pastes_one_box_and_mixes_labels_by_its_area(shape):
    x, y = _numbered(6, shape), torch.arange(6)
    torch.manual_seed(1)
    mixed = parse_policy({"cutmix": 1.0}).mix(x, y)
    own = (mixed.x == x).flatten(1).float().mean(1)
    from_partner = (mixed.x == mixed.partner_y.float().view(-1, *[1] * len(shape))).flatten(1).float().mean(1)
    moved = mixed.partner_y != y
    assert torch.allclose(own[moved], torch.full_like(own[moved], mixed.lam))
    assert torch.allclose(from_partner[moved], torch.full_like(own[moved], 1 - mixed.lam))
    assert mixed.x.shape == x.shape
    torch.manual_seed(1)
    assert torch.equal(parse_policy({"cutmix": 1.0}).mix(x, y).x, mixed.x)


def test_balanced_sampler_draws_classes_equally_and_is_seeded():
    labels = np.array([0] * 90 + [1] * 10)
    sampler = parse_policy({"balanced_sampler": True}).sampler(labels, 4000, torch.Generator().manual_seed(0))
    first = list(sampler)
    drawn = labels[first]
    assert len(drawn) == 4000 and abs(drawn.mean() - 0.5) < 0.03
    again = parse_policy({"balanced_sampler": True}).sampler(labels, 4000, torch.Generator().manual_seed(0))
    assert list(again) == first


@pytest.mark.parametrize("dims", [2, 3])
def test_strong_augmentation_changes_images_keeps_shape_and_dtype_and_is_seeded(dims):
    size = (16,) * dims
    x = torch.randint(0, 256, (4, 1, *size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    strong = Preprocess(dims, augment=parse_policy({"augment": "strong"}).augment("none"))
    torch.manual_seed(3)
    out = strong(x, train=True)
    torch.manual_seed(3)
    assert torch.equal(strong(x, train=True), out)
    plain = strong(x, train=False)
    assert out.shape == plain.shape and out.dtype == plain.dtype == torch.float32
    assert not torch.allclose(out, plain)
    torch.manual_seed(3)
    light = Preprocess(dims, augment="light")(x, train=True)
    assert not torch.allclose(out, light)  # strong is more than light


def test_strong_augmentation_keeps_segmentation_masks_valid_labels():
    x = torch.randint(0, 256, (2, 1, 16, 16), dtype=torch.uint8)
    masks = torch.zeros(2, 16, 16, dtype=torch.long)
    masks[:, 4:12, 4:12] = 2
    fov = torch.ones(2, 16, 16, dtype=torch.bool)
    torch.manual_seed(0)
    img, out_masks, out_fov = SegmentationPreprocess(2, 3, augment="strong")(x, masks, fov, train=True)
    assert img.shape == x.shape and out_masks.shape == masks.shape
    assert set(out_masks.unique().tolist()) <= {0, 2}  # intensity and cut-out never reach the masks


@pytest.mark.parametrize("spec, expected", [
    ({"mixupp": 0.2}, "policies[0]: unknown policy 'mixupp'; allowed: augment, balanced_sampler, class_weights, "
                      "cutmix, focal, label_smoothing, mixup, or none"),
    ({"augment": "heavy"}, "policies[0].augment: 'heavy' rejected: Input should be 'none', 'flip', 'light' or "
                           "'strong'"),
    ({"label_smoothing": 1.5}, "policies[0].label_smoothing: 1.5 rejected"),
    ({"class_weights": "sqrt"}, "policies[0].class_weights: 'sqrt' rejected"),
    ({"mixup": 0.2, "cutmix": 1.0}, "policies[0]: mixup and cutmix in one entry"),
    ("mixup", "policies[0]: 'mixup' needs a value"),
])
def test_a_bad_policy_is_one_error_naming_key_value_and_allowed(spec, expected):
    with pytest.raises(ConfigError) as err:
        parse_policies([spec])
    assert str(err.value).startswith(expected)


def test_entries_are_labelled_in_registry_order_and_duplicates_refused():
    entry = parse_policy({"class_weights": "balanced", "augment": "light", "label_smoothing": 0.1})
    assert entry.label() == "augment light + label_smoothing 0.1 + class_weights balanced"
    assert parse_policy({"mixup": {"alpha": 0.2}}) == parse_policy({"mixup": 0.2})
    with pytest.raises(ConfigError, match="duplicate"):
        parse_policies([{"mixup": 0.2}, {"mixup": {"alpha": 0.2}}])
    dumped = [p.model_dump(mode="json") for p in parse_policies(["none", {"augment": "strong", "focal": 2}])]
    assert dumped == ["none", {"augment": {"level": "strong"}, "focal": {"gamma": 2.0}}]
    assert [p.label() for p in parse_policies(dumped)] == ["none", "augment strong + focal 2"]  # parses back


@pytest.mark.parametrize("shape", [(2, 1, 20, 20), (2, 1, 10, 10, 10)])
def test_elastic_deformation_is_smooth_and_the_identity_without_displacement(shape):
    from medtransfer.data.augment_ops import RandomElastic
    x = torch.rand(shape)
    torch.testing.assert_close(RandomElastic(alpha=0.0, p=1.0)(x), x, atol=1e-5, rtol=0)
    ramp = torch.linspace(0, 1, shape[-1]).expand(shape).contiguous()
    warped = RandomElastic(alpha=0.1, p=1.0)(ramp)
    assert not torch.allclose(warped, ramp, atol=1e-3)
    assert (warped.diff(dim=-1).abs().max() < 3 / shape[-1])  # a smooth field: neighbours stay neighbours
