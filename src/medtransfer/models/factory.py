"""``create_backbone``: one call from a name to a depth-addressable backbone, 2D from timm, 3D from MONAI.

The registry is a plain dict; adding a backbone is one builder plus one line. Any other timm ResNet or ViT name is
accepted too, so a user is not limited to the names listed here.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import timm
from timm.models.resnet import BasicBlock, ResNet
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from medtransfer.errors import ConfigError, allowed
from medtransfer.models.backbones import Backbone, ResNetBackbone, UNetEncoderBackbone, ViTBackbone
from medtransfer.models.timm_stages import TimmStagesBackbone


@dataclass(frozen=True)
class BackboneSpec:
    build: Callable[[int, tuple[int, ...], bool], nn.Module]  # (in_chans, input_size, small_stem) -> native model
    wrapper: type[Backbone]
    spatial_dims: int
    description: str


def _timm(name: str, **kwargs):
    def build(in_chans, input_size, small_stem):
        return timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_chans, **kwargs)
    return build


def _timm_vit(name: str, **kwargs):
    def build(in_chans, input_size, small_stem):
        return timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_chans, img_size=input_size,
                                 **kwargs)
    return build


def _timm_sized(name: str, **kwargs):
    """timm models whose layout depends on the input size (Swin's attention windows and relative positions)."""
    def build(in_chans, input_size, small_stem):
        return timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_chans, img_size=input_size,
                                 **kwargs)
    return build


def _efficientnet_tiny(in_chans, input_size, small_stem):
    # B0's seven block groups (two of them not tapped by feature_info) at a quarter of the width and half the depth
    from timm.models.efficientnet import _gen_efficientnet

    return _gen_efficientnet("efficientnet_b0", channel_multiplier=0.25, depth_multiplier=0.5, pretrained=False,
                             num_classes=0, in_chans=in_chans)


def _resnet_tiny(in_chans, input_size, small_stem):
    model = ResNet(BasicBlock, [1, 1, 1, 1], channels=(16, 32, 64, 128), num_classes=0, in_chans=in_chans)
    # timm's plain stem is always 64 wide; a 16-wide stem keeps this test/demo network genuinely tiny.
    model.conv1 = nn.Conv2d(in_chans, 16, 7, 2, 3, bias=False)
    model.bn1 = nn.BatchNorm2d(16)
    model.layer1 = nn.Sequential(BasicBlock(16, 16))
    return model


def _vit_micro(in_chans, input_size, small_stem):
    return VisionTransformer(img_size=input_size, patch_size=4, in_chans=in_chans, num_classes=0, embed_dim=32,
                             depth=4, num_heads=2, mlp_ratio=2.0)


# MONAI is imported inside the 3D builders: it costs seconds, and 2D work (and ``describe`` of a 2D backbone) never
# needs it.
def _monai_resnet(block: str, layers: list[int], planes: list[int], medicalnet_depth: int | None = None):
    def build(in_chans, input_size, small_stem):
        from monai.networks.nets import ResNet as MonaiResNet
        from monai.networks.nets.resnet import get_medicalnet_pretrained_resnet_args

        # MedicalNet's weights need its shortcut type and downsample bias, which MONAI looks up by depth.
        shortcut = {} if medicalnet_depth is None else dict(zip(
            ("bias_downsample", "shortcut_type"), get_medicalnet_pretrained_resnet_args(medicalnet_depth)))
        # The normal stem is the 3D ResNet/MedicalNet one (7^3, stride 2, max-pool); the small stem keeps full
        # resolution for 28^3 MedMNIST volumes, like the 2D CIFAR-style stem.
        stem = dict(conv1_t_size=3, conv1_t_stride=1, no_max_pool=True) if small_stem else \
            dict(conv1_t_size=7, conv1_t_stride=2, no_max_pool=False)
        model = MonaiResNet(block, layers, planes, spatial_dims=3, n_input_channels=in_chans, feed_forward=False,
                            **stem, **shortcut)
        if small_stem:
            model.maxpool = nn.Identity()  # MONAI skips it by a forward flag; the backbone runs modules, not flags
        return model
    return build


class UNetEncoder(nn.Module):
    """The contracting half of MONAI's BasicUNet, with BasicUNet's module names so its weights load unchanged."""

    def __init__(self, spatial_dims: int, in_chans: int, features: tuple[int, ...]):
        from monai.networks.nets.basic_unet import Down, TwoConv

        super().__init__()
        act, norm = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True}), ("instance", {"affine": True})
        self.conv_0 = TwoConv(spatial_dims, in_chans, features[0], act, norm, True)
        for i in range(1, 5):
            setattr(self, f"down_{i}", Down(spatial_dims, features[i - 1], features[i], act, norm, True))


def _unet_encoder(features: tuple[int, ...]):
    def build(in_chans, input_size, small_stem):
        return UNetEncoder(3, in_chans, features)
    return build


def _genesis_convs(in_chans: int, mid: int, out: int) -> nn.Sequential:
    from monai.networks.blocks import Convolution

    convs = nn.Sequential()
    for i, (a, b) in enumerate(((in_chans, mid), (mid, out))):
        convs.add_module(f"conv_{i}", Convolution(3, a, b, kernel_size=3, act="relu", norm="batch", bias=True))
    return convs


class GenesisUNetEncoder(nn.Module):
    """The encoder of Models Genesis' 3D U-Net (Zhou et al. 2019): four stages of two 3x3x3 conv+BN+ReLU
    (1->32->64, 64->64->128, 128->128->256, 256->256->512), max-pooling between them, built from MONAI blocks and
    named like BasicUNet's encoder. Genesis' own BatchNorm always normalises with batch statistics; here BatchNorm
    behaves as everywhere else in medtransfer (running statistics in eval mode)."""

    def __init__(self, in_chans: int, width: int = 32):
        super().__init__()
        self.conv_0 = _genesis_convs(in_chans, width, 2 * width)
        for i in range(1, 4):
            channels = width * 2 ** i
            self.add_module(f"down_{i}", nn.Sequential(OrderedDict(
                max_pooling=nn.MaxPool3d(2), convs=_genesis_convs(channels, channels, 2 * channels))))


def _genesis_encoder(width: int):
    def build(in_chans, input_size, small_stem):
        return GenesisUNetEncoder(in_chans, width)
    return build


BACKBONES: dict[str, BackboneSpec] = {
    "resnet_tiny": BackboneSpec(_resnet_tiny, ResNetBackbone, 2, "4-block ResNet (16-128 ch) for tests and demos"),
    "resnet18": BackboneSpec(_timm("resnet18"), ResNetBackbone, 2, "timm ResNet-18"),
    "resnet50": BackboneSpec(_timm("resnet50"), ResNetBackbone, 2, "timm ResNet-50"),
    "vit_small_patch16": BackboneSpec(_timm_vit("vit_small_patch16_224"), ViTBackbone, 2, "timm ViT-S/16"),
    "vit_micro": BackboneSpec(_vit_micro, ViTBackbone, 2, "4-block ViT (32-d, patch 4) for tests"),
    "densenet121": BackboneSpec(_timm("densenet121"), TimmStagesBackbone, 2, "timm DenseNet-121 (CheXNet)"),
    "convnext_tiny": BackboneSpec(_timm("convnext_tiny"), TimmStagesBackbone, 2, "timm ConvNeXt-T"),
    "convnext_atto": BackboneSpec(_timm("convnext_atto"), TimmStagesBackbone, 2, "timm ConvNeXt-Atto (3.4 M)"),
    "efficientnet_b0": BackboneSpec(_timm("efficientnet_b0"), TimmStagesBackbone, 2, "timm EfficientNet-B0"),
    "regnety_016": BackboneSpec(_timm("regnety_016"), TimmStagesBackbone, 2, "timm RegNetY-1.6GF"),
    "swin_tiny_patch4_window7_224": BackboneSpec(_timm_sized("swin_tiny_patch4_window7_224"), TimmStagesBackbone, 2,
                                                 "timm Swin-T (window 7)"),
    # reduced widths/depths of the same timm classes, for tests (random weights, 32-64 px)
    "densenet_tiny": BackboneSpec(_timm("densenet121", growth_rate=8, block_config=(2, 2, 2, 2)), TimmStagesBackbone,
                                  2, "DenseNet-121 layout, 2 layers per block, growth 8, for tests"),
    "convnext_micro": BackboneSpec(_timm("convnext_atto", depths=(1, 1, 2, 1), dims=(8, 16, 32, 64)),
                                   TimmStagesBackbone, 2, "ConvNeXt layout (8-64 ch) for tests"),
    "efficientnet_tiny": BackboneSpec(_efficientnet_tiny, TimmStagesBackbone, 2,
                                      "EfficientNet-B0 layout at 1/4 width, 1/2 depth, for tests"),
    "regnet_tiny": BackboneSpec(_timm("regnety_002", depth=6, w0=8, wa=8, wm=2.0, group_size=8, stem_width=8),
                                TimmStagesBackbone, 2, "RegNetY layout (8-64 ch) for tests"),
    "swin_micro": BackboneSpec(_timm_sized("swin_tiny_patch4_window7_224", embed_dim=8, depths=(1, 1, 2, 1),
                                           num_heads=(1, 1, 1, 1), window_size=2), TimmStagesBackbone, 2,
                               "Swin layout (8-64 d, window 2) for tests"),
    "resnet_tiny_3d": BackboneSpec(_monai_resnet("basic", [1, 1, 1, 1], [8, 16, 32, 64]), ResNetBackbone, 3,
                                   "4-block 3D ResNet (8-64 ch) for tests"),
    "resnet10_3d": BackboneSpec(_monai_resnet("basic", [1, 1, 1, 1], [64, 128, 256, 512]), ResNetBackbone, 3,
                                "MONAI 3D ResNet-10"),
    "resnet18_3d": BackboneSpec(_monai_resnet("basic", [2, 2, 2, 2], [64, 128, 256, 512]), ResNetBackbone, 3,
                                "MONAI 3D ResNet-18"),
    "resnet50_3d": BackboneSpec(_monai_resnet("bottleneck", [3, 4, 6, 3], [64, 128, 256, 512]), ResNetBackbone, 3,
                                "MONAI 3D ResNet-50"),
    "unet_encoder_3d": BackboneSpec(_unet_encoder((32, 32, 64, 128, 256)), UNetEncoderBackbone, 3,
                                    "MONAI BasicUNet encoder (32-256 ch)"),
    "unet_tiny_3d": BackboneSpec(_unet_encoder((8, 8, 16, 32, 64)), UNetEncoderBackbone, 3,
                                 "BasicUNet encoder (8-64 ch) for tests"),
    "medicalnet_resnet10_3d": BackboneSpec(_monai_resnet("basic", [1, 1, 1, 1], [64, 128, 256, 512], 10),
                                           ResNetBackbone, 3, "MONAI 3D ResNet-10 with MedicalNet's shortcuts"),
    "medicalnet_resnet18_3d": BackboneSpec(_monai_resnet("basic", [2, 2, 2, 2], [64, 128, 256, 512], 18),
                                           ResNetBackbone, 3, "MONAI 3D ResNet-18 with MedicalNet's shortcuts"),
    "medicalnet_resnet50_3d": BackboneSpec(_monai_resnet("bottleneck", [3, 4, 6, 3], [64, 128, 256, 512], 50),
                                           ResNetBackbone, 3, "MONAI 3D ResNet-50 with MedicalNet's shortcuts"),
    "genesis_unet_encoder_3d": BackboneSpec(_genesis_encoder(32), UNetEncoderBackbone, 3,
                                            "Models Genesis 3D U-Net encoder (32-512 ch)"),
    "genesis_tiny_3d": BackboneSpec(_genesis_encoder(4), UNetEncoderBackbone, 3,
                                    "Models Genesis encoder layout (4-64 ch) for tests"),
}


def backbone_spec(name: str) -> BackboneSpec:
    """The registered spec, or one made on the fly for any other timm name: ResNets and ViTs by their own wrappers,
    any other family through its ``feature_info`` (refused at construction when it has none)."""
    if name in BACKBONES:
        return BACKBONES[name]
    if timm.is_model(name):
        module = timm.models.model_entrypoint(name).__module__  # which family, without building the model
        if module.endswith(".vision_transformer"):
            return BackboneSpec(_timm_vit(name), ViTBackbone, 2, f"timm {name}")
        if module.endswith(".resnet"):
            return BackboneSpec(_timm(name), ResNetBackbone, 2, f"timm {name}")
        build = _timm_sized(name) if module.endswith(".swin_transformer") else _timm(name)
        return BackboneSpec(build, TimmStagesBackbone, 2, f"timm {name}")
    raise ConfigError(f"backbone.name: unknown backbone {name!r}; allowed: {allowed(BACKBONES)}, "
                      "or any timm model name that supports features_only")


def default_input_size(name: str) -> int:
    """The input size the architecture was designed for: timm's ``pretrained_cfg`` where it has one."""
    spec = backbone_spec(name)
    if spec.spatial_dims == 3:
        return 64
    from timm.models import get_pretrained_cfg

    base = name if timm.is_model(name) else None
    cfg = get_pretrained_cfg(base) if base else None
    return int(cfg.input_size[-1]) if cfg and cfg.input_size else 224


def create_backbone(name: str, in_chans: int, input_size: tuple[int, ...] | int, small_stem: bool = False,
                    spatial_dims: int | None = None) -> Backbone:
    """Build a randomly initialised backbone for images of ``in_chans`` channels and ``input_size`` pixels/voxels."""
    spec = backbone_spec(name)
    if isinstance(input_size, int):
        input_size = (input_size,) * spec.spatial_dims
    input_size = tuple(int(s) for s in input_size)
    if spatial_dims is not None and spatial_dims != spec.spatial_dims:
        raise ConfigError(f"backbone.name: {name!r} is a {spec.spatial_dims}D backbone but the data is "
                          f"{spatial_dims}D; pick one of: {allowed(n for n, s in BACKBONES.items() if s.spatial_dims == spatial_dims)}")
    if len(input_size) != spec.spatial_dims:
        raise ConfigError(f"input size {input_size} does not match the {spec.spatial_dims}D backbone {name!r}")
    if small_stem and spec.wrapper is not ResNetBackbone:
        raise ConfigError(f"backbone.small_stem: only ResNet backbones have a small-image stem, not {name!r}")
    model = spec.build(in_chans, input_size, small_stem)
    if small_stem and spec.spatial_dims == 2:
        _cifar_stem(model, in_chans, name)
    try:
        return spec.wrapper(name, model, spec.spatial_dims, in_chans, input_size, small_stem)
    except ConfigError:
        raise
    except (RuntimeError, ValueError) as err:
        raise ConfigError(f"input size {input_size} is too small for backbone {name!r} ({err}); resize the data "
                          "or pick a backbone that downsamples less") from err


def _cifar_stem(model: nn.Module, in_chans: int, name: str) -> None:
    """MedMNIST "(28)" stem: 3x3 stride-1 first conv and no max-pool, so 28 px images are not shrunk 4x at once."""
    if not isinstance(model.conv1, nn.Conv2d):
        raise ConfigError(f"backbone.small_stem: {name!r} has a deep stem; small_stem needs a single-conv stem")
    model.conv1 = nn.Conv2d(in_chans, model.conv1.out_channels, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
