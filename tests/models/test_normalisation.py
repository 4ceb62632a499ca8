"""Input statistics of an init for the data's channels, and the grey -> RGB maths of ``data/normalisation.py``: the
grey image through the adapted 1-channel network must behave as the grey image copied into every channel of the
RGB network with its per-channel normalisation."""

import pytest
import torch
import torch.nn.functional as F

from medtransfer.data.normalisation import DEFAULT, IMAGENET, Normalisation
from medtransfer.data.transforms import Preprocess
from medtransfer.models.checkpoint import load_backbone_weights
from medtransfer.models.factory import create_backbone


def rgb_state(seed=0, neutral=False):
    """A 3-channel resnet_tiny state with varied weights and positive BatchNorm variances; ``neutral``: every
    first-conv filter has the same kernel on the three channels (a colour-neutral filter bank)."""
    torch.manual_seed(seed)
    backbone = create_backbone("resnet_tiny", 3, 32)
    with torch.no_grad():
        for key, t in backbone.model.state_dict().items():
            if t.dtype.is_floating_point:
                t.copy_(torch.rand_like(t) + 0.5 if key.endswith("running_var") else torch.randn_like(t) * 0.2)
        if neutral:
            backbone.model.conv1.weight.copy_(backbone.model.conv1.weight[:, :1].expand(-1, 3, -1, -1))
    return backbone.eval(), {k: v.clone() for k, v in backbone.model.state_dict().items()}


def grey_twin(state, normalisation):
    grey = create_backbone("resnet_tiny", 1, 32)
    load_backbone_weights(grey, state, "test", normalisation)
    return grey.eval()


def grey_images(n=4, seed=1):
    torch.manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 32, 32)).float() / 255


def test_statistics_for_the_data_channels():
    assert IMAGENET.for_channels(3) == IMAGENET
    assert DEFAULT.for_channels(3) == DEFAULT and DEFAULT.for_channels(1) == DEFAULT  # one value broadcasts
    grey = IMAGENET.for_channels(1)  # mu = sum(m/s) / sum(1/s), sigma = 3 / sum(1/s)
    inverse = sum(1 / s for s in IMAGENET.std)
    assert grey.mean == pytest.approx((sum(m / s for m, s in zip(IMAGENET.mean, IMAGENET.std)) / inverse,))
    assert grey.std == pytest.approx((3 / inverse,)) and grey.mean[0] == pytest.approx(0.4488, abs=1e-4)
    assert Normalisation((0.5,) * 3, (0.5,) * 3).for_channels(1).is_default  # e.g. timm's augreg ViTs
    assert IMAGENET.for_channels(4).mean == IMAGENET.mean + IMAGENET.mean[:1]  # timm repeats kernels cyclically
    assert Normalisation.from_dict(IMAGENET.to_dict()) == IMAGENET and Normalisation.from_dict(None) == DEFAULT
    assert (IMAGENET.label, DEFAULT.label, Normalisation((0.0,), (1.0,)).label) == ("imagenet", "0.5/0.5", "0/1")
    with pytest.raises(ValueError, match="one entry per channel"):
        Normalisation((0.5, 0.5), (0.5,))


def test_default_normalisation_is_bit_identical_to_the_old_arithmetic():
    images = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    assert torch.equal(Preprocess(2)(images), (images.float() / 255 - 0.5) / 0.5)
    assert torch.equal(DEFAULT(images.float() / 255), (images.float() / 255 - 0.5) / 0.5)


def test_preprocess_normalises_each_channel_with_its_statistics():
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    out = Preprocess(2, normalisation=IMAGENET)(images)
    for c in range(3):
        expected = (images[:, c].float() / 255 - IMAGENET.mean[c]) / IMAGENET.std[c]
        torch.testing.assert_close(out[:, c], expected)


def test_grey_on_rgb_weights_is_exact_when_channel_means_are_equal():
    """Unequal stds, equal means: the std-folded summed kernel and the derived grey std reproduce the RGB network
    on the grey image copied into 3 channels, features and all."""
    norm = Normalisation((0.45,) * 3, (0.2, 0.25, 0.3))
    rgb, state = rgb_state()
    g = grey_images()
    expected = rgb(norm(g.expand(-1, 3, -1, -1)))
    torch.testing.assert_close(grey_twin(state, norm)(norm.for_channels(1)(g)), expected, rtol=1e-4, atol=1e-5)
    # the plain sum with averaged statistics, what one would otherwise do, is measurably off
    naive = Normalisation((0.45,), (0.25,))
    assert not torch.allclose(grey_twin(state, None)(naive(g)), expected, rtol=1e-3, atol=1e-4)


def test_grey_on_imagenet_weights_is_exact_for_colour_neutral_filters():
    """With ImageNet's unequal means the derived grey mean cancels the constant term of every filter whose three
    channel kernels are equal, so such a network is reproduced exactly, borders included."""
    rgb, state = rgb_state(neutral=True)
    g = grey_images()
    expected = rgb(IMAGENET(g.expand(-1, 3, -1, -1)))
    got = grey_twin(state, IMAGENET)(IMAGENET.for_channels(1)(g))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_grey_on_imagenet_weights_first_conv_differs_only_by_a_fixed_offset():
    """Any filter bank: the first conv's response to image content is exact; what is left is the response to a
    constant image, sum_c (mu - m_c) / s_c * (w_c * 1), the same for every image."""
    _, state = rgb_state(seed=2)
    grey = IMAGENET.for_channels(1)
    w_rgb, w_grey = state["conv1.weight"], grey_twin(state, IMAGENET).model.conv1.weight.detach()
    conv_rgb = lambda g: F.conv2d(IMAGENET(g.expand(-1, 3, -1, -1)), w_rgb, stride=2, padding=3)  # noqa: E731
    conv_grey = lambda g: F.conv2d(grey(g), w_grey, stride=2, padding=3)  # noqa: E731
    g = grey_images(n=3)
    offset = conv_rgb(g) - conv_grey(g)
    torch.testing.assert_close(offset, offset[:1].expand_as(offset), rtol=0, atol=1e-5)  # image-independent
    coefficients = torch.tensor([(grey.mean[0] - m) / s for m, s in zip(IMAGENET.mean, IMAGENET.std)])
    ones = torch.ones(1, 3, 32, 32) * coefficients.view(1, 3, 1, 1)
    torch.testing.assert_close(offset[:1], F.conv2d(ones, w_rgb, stride=2, padding=3), rtol=1e-4, atol=1e-5)
