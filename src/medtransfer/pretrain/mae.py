"""MAE (He et al., CVPR 2022): mask 75 % of a ViT's patch tokens, encode only the visible ones, reconstruct the
pixels of the masked patches with a light transformer decoder; loss = MSE on masked patches of per-patch-normalised
pixels (``norm_pix_loss``). Defaults are the paper's: mask ratio 0.75, decoder 8 blocks of width 512 with 16 heads.

The encoder is the timm ViT inside the Backbone (patch_embed, pos_embed, prefix tokens, norm_pre, blocks, norm), run
on the kept tokens only; masking and token gather/scatter use lightly's MAE utilities.
"""

from __future__ import annotations

import torch
from lightly.models import utils as lightly_utils
from pydantic import Field
from timm.models.vision_transformer import Block
from torch import nn

from medtransfer.pretrain.base import BaseMethod, MethodOptions
from medtransfer.pretrain.spark import masked_normalised_mse, patchify


class MAEOptions(MethodOptions):
    mask_ratio: float = Field(0.75, gt=0, lt=1)  # He et al. 2022
    decoder_dim: int = Field(512, ge=8)  # He et al. 2022, Table 1 default decoder width
    decoder_depth: int = Field(8, ge=1)  # He et al. 2022, Table 1 default decoder depth
    decoder_heads: int = Field(16, ge=1)  # He et al. 2022 (512 / 16 = 32-d heads)
    norm_pix_loss: bool = True  # per-patch-normalised targets, the paper's better variant
    norm_eps: float = Field(1e-6, gt=0)


class MAE(BaseMethod):
    Options = MAEOptions
    family = "restorative"
    spatial_dims = (2,)
    backbone_families = ("vit",)

    def __init__(self, backbone, options: MAEOptions, **kwargs):
        super().__init__(backbone, options, **kwargs)
        vit = backbone.model
        self.patch = tuple(vit.patch_embed.patch_size)
        self.num_patches = int(vit.patch_embed.num_patches)
        self.num_prefix = int(vit.num_prefix_tokens)
        dim, dd = int(vit.embed_dim), options.decoder_dim
        if dd % options.decoder_heads:
            raise ValueError(f"mae: decoder_dim {dd} is not divisible by decoder_heads {options.decoder_heads}")
        self.decoder_embed = nn.Linear(dim, dd)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dd))
        self.decoder_pos = nn.Parameter(torch.zeros(1, self.num_prefix + self.num_patches, dd))
        self.decoder_blocks = nn.Sequential(*[Block(dd, options.decoder_heads, mlp_ratio=4.0, qkv_bias=True)
                                              for _ in range(options.decoder_depth)])
        self.decoder_norm = nn.LayerNorm(dd)
        self.decoder_pred = nn.Linear(dd, self.patch[0] * self.patch[1] * backbone.in_chans)
        nn.init.normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.decoder_pos, std=0.02)

    def random_mask(self, batch: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(idx_keep, idx_mask) over patch tokens only (prefix tokens are always kept)."""
        return lightly_utils.random_token_mask((batch, self.num_patches), self.options.mask_ratio,
                                               mask_class_token=True, device=device)

    def encode(self, x: torch.Tensor, idx_keep: torch.Tensor) -> torch.Tensor:
        """Visible tokens through the backbone's ViT: (B, prefix + kept, D)."""
        vit = self.backbone.model
        tokens = vit.patch_embed(x)
        if tokens.ndim == 4:  # NHWC patch embeddings
            tokens = tokens.flatten(1, 2)
        prefix_pos = None
        if vit.pos_embed is not None:
            if vit.no_embed_class:
                tokens = tokens + vit.pos_embed
            else:
                tokens = tokens + vit.pos_embed[:, self.num_prefix:]
                prefix_pos = vit.pos_embed[:, :self.num_prefix]
        tokens = lightly_utils.get_at_index(tokens, idx_keep)
        prefix = [t.expand(len(x), -1, -1) for t in (vit.cls_token, vit.reg_token) if t is not None]
        if prefix:
            prefix = torch.cat(prefix, dim=1)
            tokens = torch.cat([prefix + prefix_pos if prefix_pos is not None else prefix, tokens], dim=1)
        tokens = vit.norm_pre(vit.pos_drop(tokens))
        return vit.norm(vit.blocks(tokens))

    def decode(self, encoded: torch.Tensor, idx_keep: torch.Tensor) -> torch.Tensor:
        """Pixel predictions for every patch: (B, N, patch_h * patch_w * C)."""
        y = self.decoder_embed(encoded)
        prefix, visible = y[:, :self.num_prefix], y[:, self.num_prefix:]
        full = lightly_utils.repeat_token(self.mask_token, (len(y), self.num_patches))
        full = lightly_utils.set_at_index(full, idx_keep, visible.type_as(full))
        seq = torch.cat([prefix, full], dim=1) + self.decoder_pos
        seq = self.decoder_norm(self.decoder_blocks(seq))
        return self.decoder_pred(seq[:, self.num_prefix:])

    def target_patches(self, images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[2:]
        if h == w and self.patch[0] == self.patch[1]:
            return lightly_utils.patchify(images, self.patch[0])
        return patchify(images, self.patch)

    def loss_from_prediction(self, pred: torch.Tensor, images: torch.Tensor, idx_mask: torch.Tensor) -> torch.Tensor:
        masked = torch.zeros(pred.shape[:2], dtype=torch.bool, device=pred.device).scatter(1, idx_mask, True)
        target = self.target_patches(images)
        if self.options.norm_pix_loss:
            return masked_normalised_mse(pred, target, masked, self.options.norm_eps)
        per_patch = ((pred - target) ** 2).mean(dim=-1)
        return (per_patch * masked).sum() / masked.sum().clamp_min(1)

    def ssl_loss(self, images):
        idx_keep, idx_mask = self.random_mask(len(images), images.device)
        pred = self.decode(self.encode(self.normalise(images), idx_keep), idx_keep)
        return self.loss_from_prediction(pred, images, idx_mask)
