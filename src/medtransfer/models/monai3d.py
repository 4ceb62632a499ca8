"""MONAI's 3D SSL encoders as depth-addressable backbones: Swin UNETR's encoder (``SwinViT``) and SegResNet's down path.

Both keep MONAI's own modules and parameter names, so a MONAI state dict (or the published Swin UNETR SSL weights,
``convert.py``) loads unchanged and a medtransfer checkpoint is a plain MONAI state dict.

* Swin UNETR: one step per Swin stage (``layers1..4``, each ending in its patch merging; Swin UNETR v2's residual conv
  block ``layersNc`` joins its stage). The patch embedding joins the first stage. Every stage output goes through
  SwinViT's parameter-free layer norm (``proj_out``), exactly the hidden states the Swin UNETR decoder reads; pooled
  features are the mean of the last one (the "last norm" therefore sits after the last kept stage).
* SegResNet: ``convInit`` joins the first stage; one step per residual block, a stage's strided entry convolution
  joining its first block, so the stage view has one unit per resolution and the block view one per ResBlock.

MONAI is imported inside the builders (seconds of start-up that 2D work never pays).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from medtransfer.models.backbones import Backbone, Step


def _run(model: nn.Module, prefixes: tuple[str, ...], x):
    """Apply the modules under ``prefixes`` in order; a ModuleList holds MONAI's single stage module at index 0."""
    for prefix in prefixes:
        module = model.get_submodule(prefix)
        x = module[0](x.contiguous()) if isinstance(module, nn.ModuleList) else module(x)
    return x


class SwinViTBackbone(Backbone):
    """MONAI's ``SwinTransformer`` (the ``swinViT`` of ``SwinUNETR``): patch embedding + four Swin stages."""

    family = "swin_unetr"
    first_conv = "patch_embed.proj.weight"

    def __init__(self, name, model, spatial_dims, in_chans, input_size, small_stem):
        steps = [Step("patch_embed", ("patch_embed", "pos_drop"), 0)]
        for i in range(1, model.num_layers + 1):
            conv = (f"layers{i}c",) if model.use_v2 else ()
            steps.append(Step(f"layers{i}", conv + (f"layers{i}",), i))
        super().__init__(name, model, steps, spatial_dims, in_chans, input_size, small_stem)

    def run_step(self, step, x):
        return _run(self.model, step.prefixes, x)

    def to_map(self, x):
        return self.model.proj_out(x, normalize=True)

    def pool(self, x):
        return super().pool(self.to_map(x))


class SegResNetEncoder(nn.Module):
    """The down path of MONAI's ``SegResNet`` (``convInit``, ``down_layers``), under SegResNet's names."""

    def __init__(self, in_chans: int, init_filters: int, blocks_down: tuple[int, ...]):
        from monai.networks.nets import SegResNet

        super().__init__()
        net = SegResNet(spatial_dims=3, init_filters=init_filters, in_channels=in_chans, blocks_down=blocks_down,
                        blocks_up=(1,) * (len(blocks_down) - 1))
        self.convInit, self.down_layers = net.convInit, net.down_layers
        self.init_filters, self.blocks_down = init_filters, tuple(blocks_down)


class SegResNetBackbone(Backbone):
    """SegResNet's encoder: stage view (one unit per resolution) and block view (one unit per ResBlock)."""

    family = "segresnet"
    first_conv = "convInit.conv.weight"

    def __init__(self, name, model, spatial_dims, in_chans, input_size, small_stem):
        steps = [Step("convInit", ("convInit",), 0)]
        for i, layer in enumerate(model.down_layers):
            for j in range(1, len(layer)):
                entry = (f"down_layers.{i}.0",) if j == 1 else ()  # the stride-2 conv (identity in stage 0)
                steps.append(Step(f"down_layers.{i}.{j}", entry + (f"down_layers.{i}.{j}",), i + 1))
        super().__init__(name, model, steps, spatial_dims, in_chans, input_size, small_stem)

    def run_step(self, step, x):
        return _run(self.model, step.prefixes, x)

    @property
    def views(self):
        blocks = [[i] for i in range(1, len(self.steps))]
        blocks[0] = [0] + blocks[0]
        return {"stage": self._group_by_stage(join_stem=True), "block": blocks}


@dataclass(frozen=True)
class SwinConfig:
    """SwinUNETR's encoder arguments; the defaults are the published self-supervised model's (Tang et al. 2022)."""

    feature_size: int = 48
    depths: tuple[int, ...] = (2, 2, 2, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    use_v2: bool = False

    def build(self, in_chans, input_size, small_stem):
        from monai.networks.nets.swin_unetr import SwinTransformer

        # as SwinUNETR builds its swinViT: patch 2, MLP ratio 4, qkv bias, no dropout, patch merging
        return SwinTransformer(in_chans=in_chans, embed_dim=self.feature_size, window_size=(self.window_size,) * 3,
                               patch_size=(2, 2, 2), depths=self.depths, num_heads=self.num_heads, spatial_dims=3,
                               use_v2=self.use_v2)


def segresnet(init_filters: int, blocks_down: tuple[int, ...]):
    def build(in_chans, input_size, small_stem):
        return SegResNetEncoder(in_chans, init_filters, blocks_down)
    return build
