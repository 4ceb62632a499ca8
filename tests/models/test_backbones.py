import pytest
import torch
from monai.networks.nets import ResNet as MonaiResNet
from torch import nn

from medtransfer.errors import ConfigError
from medtransfer.models.backbones import Backbone, ResNetBackbone, Step, owns
from medtransfer.models.factory import create_backbone
from medtransfer.models.heads import Classifier


def _native(backbone, x):
    """The wrapped library model's own pooled features."""
    model = backbone.model
    if isinstance(model, MonaiResNet):
        return model(x)
    return model.forward_head(model.forward_features(x), pre_logits=True)


def _n_params(module, prefixes=None):
    return sum(p.numel() for name, p in module.named_parameters()
               if prefixes is None or any(owns(pre, name) for pre in prefixes))


@pytest.mark.parametrize("name, size, small_stem", [
    ("resnet_tiny", 32, False), ("resnet_tiny", 28, True), ("vit_micro", 32, False), ("resnet_tiny_3d", 16, True),
])
def test_forward_equals_native_pooled_features(name, size, small_stem):
    backbone = create_backbone(name, 2, size, small_stem=small_stem).eval()
    x = torch.randn(2, 2, *backbone.input_size)
    with torch.no_grad():
        out, ref = backbone(x), _native(backbone, x)
    assert out.shape == (2, backbone.num_features)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_ownership_is_checked_at_construction():
    model = create_backbone("resnet_tiny", 1, 32).model
    stem = Step("stem", ("conv1", "bn1", "act1", "maxpool"), 0)
    layers = [Step(f"layer{i}", (f"layer{i}",), i) for i in range(1, 5)]
    with pytest.raises(AssertionError, match=r"layer4\.0\..* owned by no step"):
        Backbone("broken", model, [stem] + layers[:3], 2, 1, (32, 32), False)
    with pytest.raises(AssertionError, match=r"owned by \['layer1\.0', 'layer1'\]"):
        Backbone("broken", model, [stem, Step("dup", ("layer1.0",), 1)] + layers, 2, 1, (32, 32), False)


@pytest.mark.parametrize("name, size, small_stem, shapes", [
    ("resnet_tiny", 32, False, [(16, 8), (16, 8), (32, 4), (64, 2), (128, 1)]),
    ("resnet_tiny", 32, True, [(16, 32), (16, 32), (32, 16), (64, 8), (128, 4)]),
    ("vit_micro", 32, False, [(32, 8), (32, 8)]),  # embed, blocks (patch 4)
    ("resnet_tiny_3d", 16, True, [(8, 16), (8, 16), (16, 8), (32, 4), (64, 2)]),
    ("unet_tiny_3d", 32, False, [(8, 32), (8, 16), (16, 8), (32, 4), (64, 2)]),
])
def test_feature_maps_one_per_native_stage(name, size, small_stem, shapes):
    backbone = create_backbone(name, 1, size, small_stem=small_stem).eval()
    x = torch.randn(2, 1, *backbone.input_size)
    with torch.no_grad():
        maps = backbone.feature_maps(x)
        pooled = backbone(x)
    dims = backbone.spatial_dims
    assert [tuple(m.shape) for m in maps] == [(2, c, *(s,) * dims) for c, s in shapes]
    if backbone.family == "vit":  # the last map is the native, final-normed patch-token grid
        with torch.no_grad():
            tokens = backbone.model.forward_features(x)[:, backbone.model.num_prefix_tokens:]
        torch.testing.assert_close(maps[-1], tokens.transpose(1, 2).reshape(maps[-1].shape))
    else:  # the last map, pooled, is the forward output
        torch.testing.assert_close(maps[-1].mean(dim=tuple(range(2, maps[-1].ndim))), pooled)


@pytest.mark.parametrize("name, dims", [("resnet_tiny", 2), ("resnet_tiny_3d", 3)])
def test_small_stem_keeps_full_resolution(name, dims):
    backbone = create_backbone(name, 1, 28, small_stem=True)
    conv = backbone.model.conv1
    assert conv.kernel_size == (3,) * dims and conv.stride == (1,) * dims
    assert isinstance(backbone.model.maxpool, nn.Identity)
    with torch.no_grad():
        layer1 = backbone.feature_maps(torch.randn(1, 1, *(28,) * dims))[1]
    assert layer1.shape[2:] == (28,) * dims
    assert create_backbone(name, 1, 28).model.conv1.stride == (2,) * dims


@pytest.mark.parametrize("name", ["vit_micro", "resnet18d", "unet_tiny_3d"])
def test_small_stem_rejected_without_single_conv_stem(name):
    with pytest.raises(ConfigError, match="small_stem"):
        create_backbone(name, 1, 32, small_stem=True)


@pytest.mark.parametrize("name, keep, features", [("resnet_tiny", 3, 32), ("vit_micro", 2, 32)])
def test_truncate_removes_dropped_steps(name, keep, features):
    backbone = create_backbone(name, 1, 32).eval()
    before = _n_params(backbone.model)
    dropped = _n_params(backbone.model, tuple(p for s in backbone.steps[keep:] for p in s.prefixes))
    assert dropped > 0
    backbone.truncate(keep)
    assert _n_params(backbone.model) == before - dropped
    assert len(backbone.steps) == keep and backbone.num_features == features
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        out = backbone(x)
    assert out.shape == (2, features)
    torch.testing.assert_close(out, _native(backbone, x))  # dropped modules are identities in the native model
    with pytest.raises(ConfigError, match="truncate"):
        backbone.truncate(keep + 1)


@pytest.mark.parametrize("in_chans", [1, 3, 5])
@pytest.mark.parametrize("name, size", [("resnet_tiny", 32), ("resnet_tiny_3d", 16)])
def test_in_chans(name, size, in_chans):
    backbone = create_backbone(name, in_chans, size)
    assert backbone.model.conv1.weight.shape[1] == in_chans
    with torch.no_grad():
        assert backbone(torch.randn(2, in_chans, *backbone.input_size)).shape == (2, backbone.num_features)


def test_unknown_name_lists_allowed():
    with pytest.raises(ConfigError, match=r"'nope'.*resnet50.*resnet_tiny.*vit_micro"):
        create_backbone("nope", 1, 32)


def test_2d_backbone_for_3d_data_is_rejected():
    with pytest.raises(ConfigError, match=r"2D backbone.*3D.*resnet_tiny_3d.*unet_tiny_3d") as err:
        create_backbone("resnet_tiny", 1, 32, spatial_dims=3)
    assert "vit_micro" not in str(err.value)


def test_any_timm_resnet_is_accepted():
    backbone = create_backbone("resnet34", 1, 32)
    assert isinstance(backbone, ResNetBackbone)
    assert [len(backbone.view(v)) for v in ("stage", "block")] == [4, 16]  # 3+4+6+3 basic blocks
    assert backbone.num_features == 512


def test_input_too_small_names_the_size():
    with pytest.raises(ConfigError, match=r"\(8, 8, 8\) is too small.*unet_tiny_3d"):
        create_backbone("unet_tiny_3d", 1, 8)


# --- heads -------------------------------------------------------------------------------------------------


def test_classifier_train_keeps_frozen_batchnorm_in_eval():
    model = Classifier(create_backbone("resnet_tiny", 1, 32), num_outputs=3)
    for name, p in model.backbone.model.named_parameters():
        p.requires_grad = not owns("layer1", name)
    model.eval().train()
    bns = {n: m.training for n, m in model.backbone.model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert {n for n, training in bns.items() if not training} == {"layer1.0.bn1", "layer1.0.bn2"}
    assert model.training and model.head.training
    x = torch.randn(4, 1, 32, 32)
    frozen_stats = model.backbone.model.layer1[0].bn1.running_mean.clone()
    assert model(x).shape == (4, 3)
    assert torch.equal(model.backbone.model.layer1[0].bn1.running_mean, frozen_stats)
    assert not torch.equal(model.backbone.model.bn1.running_mean, torch.zeros(16))  # unfrozen BN still updates
    assert not any(m.training for m in model.train(False).modules())
