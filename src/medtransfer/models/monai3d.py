"""MONAI's 3D SSL encoders as depth-addressable backbones: Swin UNETR's encoder (``SwinViT``) and SegResNet's down path.

Both keep MONAI's own modules and parameter names, so a MONAI state dict (or the published Swin UNETR SSL weights,
``convert.py``) loads unchanged and a medtransfer checkpoint is a plain MONAI state dict.

* Swin UNETR: stage view (``layers1..4``, each ending in its patch merging; Swin UNETR v2's residual conv block
  ``layersNc`` joins its stage) and block view (one unit per Swin block). The patch embedding joins the first unit.
  Every stage output goes through SwinViT's parameter-free layer norm (``proj_out``), exactly the hidden states the
  Swin UNETR decoder reads; pooled features are the mean of the last one (the "last norm" therefore sits after the
  last kept step).
* SegResNet: ``convInit`` joins the first stage; one step per residual block, a stage's strided entry convolution
  joining its first block, so the stage view has one unit per resolution and the block view one per ResBlock.

MONAI is imported only where a 3D backbone is built or run (seconds of start-up that 2D work never pays).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from medtransfer.models.backbones import Backbone, Step


def _channels_last(module, x, *args):
    """Swin blocks and patch merging take (B, D, H, W, C), as in MONAI's ``BasicLayer``; steps pass (B, C, D, H, W)."""
    return module(x.permute(0, 2, 3, 4, 1), *args).permute(0, 4, 1, 2, 3)


def _stage_and_block_views(backbone: Backbone) -> dict[str, list[list[int]]]:
    """One unit per stage, and one per block with the stem (patch embedding, convInit) joining the first."""
    blocks = [[i] for i in range(1, len(backbone.steps))]
    blocks[0] = [0] + blocks[0]
    return {"stage": backbone._group_by_stage(join_stem=True), "block": blocks}


class SwinViTBackbone(Backbone):
    """MONAI's ``SwinTransformer`` (the ``swinViT`` of ``SwinUNETR``): patch embedding, then one step per Swin block
    (a stage's v2 conv block joins its first block, its patch merging its last)."""

    family = "swin_unetr"
    first_conv = "patch_embed.proj.weight"

    def __init__(self, name, model, spatial_dims, in_chans, input_size, small_stem):
        steps = [Step("patch_embed", ("patch_embed", "pos_drop"), 0)]
        for i in range(1, model.num_layers + 1):
            layer = getattr(model, f"layers{i}")[0]
            n = len(layer.blocks)
            for j in range(n):
                conv = (f"layers{i}c",) if model.use_v2 and j == 0 else ()
                merge = (f"layers{i}.0.downsample",) if j == n - 1 and layer.downsample is not None else ()
                steps.append(Step(f"layers{i}.{j}", conv + (f"layers{i}.0.blocks.{j}",) + merge, i))
        super().__init__(name, model, steps, spatial_dims, in_chans, input_size, small_stem)

    def run_step(self, step, x):
        """``BasicLayer.forward`` one block at a time: every block of a stage gets the stage's shifted-window mask."""
        from monai.networks.nets.swin_unetr import compute_mask, get_window_size

        for prefix in step.prefixes:
            module = self.model.get_submodule(prefix)
            if step.stage == 0:
                x = module(x)
            elif prefix == f"layers{step.stage}c":  # Swin UNETR v2's residual conv block, before the first block
                x = module[0](x.contiguous())
            elif ".blocks." in prefix:
                layer = getattr(self.model, f"layers{step.stage}")[0]
                size = x.shape[2:]
                window, shift = get_window_size(size, layer.window_size, layer.shift_size)
                padded = [math.ceil(s / w) * w for s, w in zip(size, window)]
                x = _channels_last(module, x, compute_mask(padded, window, shift, x.device))
            else:  # patch merging
                x = _channels_last(module, x)
        return x

    def to_map(self, x):
        return self.model.proj_out(x, normalize=True)

    def pool(self, x):
        return super().pool(self.to_map(x))

    @property
    def views(self):
        return _stage_and_block_views(self)


class SegResNetEncoder(nn.Module):
    """The down path of MONAI's ``SegResNet`` (``convInit``, ``down_layers``), under SegResNet's names."""

    def __init__(self, in_chans: int, init_filters: int, blocks_down: tuple[int, ...]):
        from monai.networks.nets import SegResNet

        super().__init__()
        net = SegResNet(spatial_dims=3, init_filters=init_filters, in_channels=in_chans, blocks_down=blocks_down,
                        blocks_up=(1,) * (len(blocks_down) - 1))
        self.convInit, self.down_layers = net.convInit, net.down_layers
        self.init_filters = init_filters  # SegResNet's decoder (monai3d_decoders.py) is built from it


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
        for prefix in step.prefixes:
            x = self.model.get_submodule(prefix)(x)
        return x

    @property
    def views(self):
        return _stage_and_block_views(self)


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
