"""Rotation prediction (Gidaris et al. 2018, "Unsupervised representation learning by predicting image rotations").

Each image is rotated by one of a fixed set of rotations and a classifier on the backbone's pooled features predicts
which one (cross-entropy).

Label sets (``ROTATIONS[spatial_dims]``, index = class label):

* 2D, 4 classes: label ``k`` rotates the (H, W) plane by ``k`` x 90 degrees (``torch.rot90(x, k, (-2, -1))``).
* 3D, 10 classes, rotations of the (D, H, W) volume about its three axes, the identity shared (as the 3D rotation
  pretext of Taleb et al. 2020, "3D self-supervised methods for medical imaging"):
  0 = identity; 1-3 = 90/180/270 degrees about the D axis (plane H-W); 4-6 = about the H axis (plane D-W);
  7-9 = about the W axis (plane D-H). These are 10 distinct elements of the cube's rotation group, so no two labels
  give the same volume on a generic input.

Rotations by 90 degrees need square (2D) / cubic (3D) inputs; ``unsupported`` says so for other backbones' sizes.
All rotations are batched tensor ops (one ``torch.rot90`` per class on the images of that class).
"""

from __future__ import annotations

from typing import Optional

import torch
from pydantic import Field
from torch import nn

from medtransfer.pretrain.base import BaseMethod, MethodOptions

_PLANES_3D = ((-2, -1), (-3, -1), (-3, -2))  # about the D, H and W axis
ROTATIONS: dict[int, tuple[tuple[int, tuple[int, int]], ...]] = {
    2: tuple((k, (-2, -1)) for k in range(4)),
    3: ((0, (-2, -1)),) + tuple((k, plane) for plane in _PLANES_3D for k in (1, 2, 3)),
}


def rotate(x: torch.Tensor, labels: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """Rotate each sample of ``x`` (B, C, *spatial) by the rotation its label names (or undo it)."""
    spatial_dims = x.ndim - 2
    out = torch.empty_like(x)
    for label, (k, plane) in enumerate(ROTATIONS[spatial_dims]):
        mask = labels == label
        if mask.any():
            out[mask] = torch.rot90(x[mask], -k if inverse else k, plane)
    return out


def make_head(in_features: int, hidden_dim: int, n_classes: int) -> nn.Module:
    if hidden_dim == 0:
        return nn.Linear(in_features, n_classes)
    return nn.Sequential(nn.Linear(in_features, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
                         nn.Linear(hidden_dim, n_classes))


class RotationOptions(MethodOptions):
    # Gidaris et al.: feeding all four rotations of each image in the same batch trains best. None = that in 2D;
    # in 3D (10 rotations, 10x the memory) one random rotation per volume, as Taleb et al.'s 3D rotation task.
    all_rotations: Optional[bool] = None
    # 0 = a linear classifier on the pooled features (Gidaris et al. predict the rotation from the network's last
    # layer); > 0 = a 2-layer MLP head with that hidden width.
    hidden_dim: int = Field(0, ge=0)
    augment: bool = True  # apply a random medical view before rotating (data diversity, as SimCLR's views)


class Rotation(BaseMethod):
    Options = RotationOptions
    family = "predictive"
    spatial_dims = (2, 3)

    @classmethod
    def unsupported(cls, backbone):
        problem = super().unsupported(backbone)
        if problem is None and len(set(backbone.input_size)) != 1:
            problem = f"rotates by 90 degrees, so it needs square/cubic inputs, not {tuple(backbone.input_size)}"
        return problem

    def __init__(self, backbone, options: RotationOptions, **kwargs):
        super().__init__(backbone, options, **kwargs)
        self.n_classes = len(ROTATIONS[backbone.spatial_dims])
        self.all_rotations = backbone.spatial_dims == 2 if options.all_rotations is None else options.all_rotations
        self.head = make_head(backbone.num_features, options.hidden_dim, self.n_classes)
        self.criterion = nn.CrossEntropyLoss()

    def pretext(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotated inputs and their labels."""
        if self.options.augment:
            images = self.views(images)
        n = len(images)
        if self.all_rotations:
            labels = torch.arange(self.n_classes, device=images.device).repeat_interleave(n)
            images = images.repeat(self.n_classes, *(1,) * (images.ndim - 1))
        else:
            labels = torch.randint(0, self.n_classes, (n,), device=images.device)
        return rotate(images, labels), labels

    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, labels) of the rotation task on a batch of [0, 1] images."""
        inputs, labels = self.pretext(images)
        return self.head(self.backbone(self.normalise(inputs))), labels

    def ssl_loss(self, images):
        return self.criterion(*self.predict(images))
