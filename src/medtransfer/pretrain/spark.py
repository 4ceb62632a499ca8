"""SparK (Tian et al., ICLR 2023): BERT-style masked image modelling for CNNs, 2D and 3D ResNets.

* The mask is a random grid of patches at the backbone's total downsampling stride (the grid is the last stage's
  map size, e.g. 7x7 for a ResNet at 224 px), ``mask_ratio`` 0.6 of them masked (paper default).
* Sparse convolution is emulated without touching the model: the (nearest-upsampled) mask zeroes the masked positions
  of the normalised input and of every backbone step's output at that step's resolution, so masked content never
  reaches a visible position and masked positions stay empty after every step (no "mask pattern vanishing").
* "Densify": at each stage map a learned per-scale mask token fills the masked positions before the light U-Net
  decoder (``models/decoders.py``) upsamples back to the input resolution.
* Loss: MSE on the masked patches only, against per-patch-normalised targets (mean/std over each patch's pixels and
  channels, eps 1e-6 inside the square root, as in SparK/MAE).

BatchNorm: SparK uses *sparse* BatchNorm (statistics over visible positions only). Here the backbone's own dense
BatchNorm runs unchanged, so in training its batch statistics also count the zeros at masked positions (the mean is
pulled towards 0 and the variance shrinks by roughly the mask ratio). This is a deliberate simplification: it keeps
the backbone a plain timm/MONAI module whose weights load unchanged; the outputs at masked positions are re-zeroed
right after, so no masked content leaks, only the normalisation statistics differ from the paper's.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import nn

from medtransfer.pretrain.base import BaseMethod, MethodOptions
from medtransfer.models.decoders import UNetDecoder, resize


class SparKOptions(MethodOptions):
    mask_ratio: float = Field(0.6, gt=0, lt=1)  # Tian et al. 2023, default mask ratio
    decoder_max_width: int = Field(256, ge=8)
    norm_eps: float = Field(1e-6, gt=0)  # per-patch target normalisation (as in MAE's norm_pix_loss)


def patchify(x: torch.Tensor, patch: tuple[int, ...]) -> torch.Tensor:
    """(B, C, *spatial) -> (B, L, prod(patch) * C), patches in row-major grid order (2D or 3D)."""
    b, c, *size = x.shape
    d = len(size)
    grid = [s // p for s, p in zip(size, patch)]
    x = x.reshape(b, c, *[v for g, p in zip(grid, patch) for v in (g, p)])
    x = x.permute(0, *[2 + 2 * i for i in range(d)], *[3 + 2 * i for i in range(d)], 1)
    return x.reshape(b, math.prod(grid), math.prod(patch) * c)


def masked_normalised_mse(pred: torch.Tensor, target: torch.Tensor, masked: torch.Tensor,
                          eps: float = 1e-6) -> torch.Tensor:
    """Mean over masked patches of the per-pixel MSE between ``pred`` and per-patch-normalised ``target``.

    ``pred``/``target`` (B, L, P); ``masked`` (B, L) bool, True where a patch was hidden from the encoder.
    """
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True, correction=0)
    target = (target - mean) / (var + eps).sqrt()
    per_patch = ((pred - target) ** 2).mean(dim=-1)
    masked = masked.to(per_patch.dtype)
    return (per_patch * masked).sum() / masked.sum().clamp_min(1)


class SparK(BaseMethod):
    Options = SparKOptions
    family = "restorative"
    spatial_dims = (2, 3)
    backbone_families = ("resnet", "cnn")

    @classmethod
    def unsupported(cls, backbone):
        if backbone.family in ("vit", "hierarchical_vit"):
            return (f"re-masks convolutional stage maps; {backbone.name} is a transformer ({backbone.family}): "
                    "use method 'mae' (plain ViTs) for masked image modelling")
        problem = super().unsupported(backbone)
        if problem:
            return problem
        maps = backbone.map_shapes
        grid = maps[-1][1]
        sizes = [tuple(backbone.input_size)] + [size for _, size in maps]
        if any(s % g for size in sizes for s, g in zip(size, grid)):
            return (f"needs the input and every stage's map to be divisible by its mask grid {grid} (the last "
                    f"stage's map) so the mask stays aligned at every scale; map sizes here: {sizes}")
        return None

    def __init__(self, backbone, options: SparKOptions, **kwargs):
        super().__init__(backbone, options, **kwargs)
        maps = backbone.map_shapes
        self.grid = maps[-1][1]
        self.patch = tuple(s // g for s, g in zip(backbone.input_size, self.grid))
        shape = (1,) * backbone.spatial_dims
        self.mask_tokens = nn.ParameterList(nn.Parameter(torch.zeros(1, c, *shape)) for c, _ in maps)
        for token in self.mask_tokens:
            nn.init.trunc_normal_(token, std=0.02)
        self.decoder = UNetDecoder(backbone.spatial_dims, [c for c, _ in maps], backbone.in_chans,
                                   max_width=options.decoder_max_width)

    def random_mask(self, batch: int, device) -> torch.Tensor:
        """(B, 1, *grid) bool, True = visible; exactly round(ratio * L) patches masked per sample (at least one
        visible when the grid has more than one patch)."""
        n = math.prod(self.grid)
        n_mask = min(max(1, round(self.options.mask_ratio * n)), n - 1) if n > 1 else n
        order = torch.rand(batch, n, device=device).argsort(dim=1)
        visible = order >= n_mask
        return visible.view(batch, 1, *self.grid)

    def sparse_feature_maps(self, x: torch.Tensor, visible: torch.Tensor, mask_input: bool = True,
                            remask: bool = True) -> list[torch.Tensor]:
        """``Backbone.feature_maps`` with the mask applied to the input and re-applied after every step."""
        keep = visible.to(x.dtype)

        def mask(t: torch.Tensor) -> torch.Tensor:
            return t * resize(keep, t.shape[2:])

        return self.backbone.feature_maps(mask(x) if mask_input else x, after_step=mask if remask else None)

    def densify(self, maps: list[torch.Tensor], visible: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for fmap, token in zip(maps, self.mask_tokens):
            keep = resize(visible.to(fmap.dtype), fmap.shape[2:])
            out.append(fmap * keep + token * (1 - keep))
        return out

    def loss_from_prediction(self, pred: torch.Tensor, images: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        masked = ~visible.flatten(1)
        return masked_normalised_mse(patchify(pred, self.patch), patchify(images, self.patch), masked,
                                     self.options.norm_eps)

    def ssl_loss(self, images):
        visible = self.random_mask(len(images), images.device)
        maps = self.densify(self.sparse_feature_maps(self.normalise(images), visible), visible)
        pred = self.decoder(maps, images.shape[2:])
        return self.loss_from_prediction(pred, images, visible)
