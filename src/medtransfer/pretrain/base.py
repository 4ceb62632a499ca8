"""The contract every pre-training method fulfils (after solo-learn's ``BaseMethod``, kept small).

A method is a plain ``nn.Module``: it owns a backbone plus whatever heads its objective needs, turns a batch of
[0, 1] images into a loss in ``ssl_loss``, and declares its options as a pydantic model so YAML typos fail before
training. Whatever it does between steps is part of the contract too, with the step and epoch passed in explicitly:
``after_backward`` (gradient edits), ``after_step`` (after each optimiser step: momentum encoders) and ``on_epoch``
(at each epoch start: temperature warm-ups, first-epoch freezes). One driver (``module.PretrainModule``) calls them,
and ``MultiSSL`` forwards them to its parts, so a method behaves the same alone and inside a combination.
Optimisation, data and logging live in the driver, never here.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from medtransfer.data.normalisation import DEFAULT
from medtransfer.data.transforms import MedicalViews
from medtransfer.models.backbones import Backbone


class MethodOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BaseMethod(nn.Module):
    """Subclasses set ``Options``, ``family`` and what they support, and implement ``ssl_loss``."""

    Options: type[MethodOptions] = MethodOptions
    family = "contrastive"  # contrastive | restorative | predictive | multi: decides which depth ranges to try later
    spatial_dims: tuple[int, ...] = (2, 3)
    backbone_families: tuple[str, ...] | None = None  # None: any backbone with pooled features
    needs_labels = False  # True: ``ssl_loss(images, labels)`` receives the training labels (supervised method)

    @classmethod
    def unsupported(cls, backbone: Backbone) -> str | None:
        """Why this method cannot pre-train ``backbone`` (None when it can), checked before any training."""
        if backbone.spatial_dims not in cls.spatial_dims:
            return f"works on {'/'.join(f'{d}D' for d in cls.spatial_dims)} data, not {backbone.spatial_dims}D"
        if cls.backbone_families is not None and backbone.family not in cls.backbone_families:
            return f"needs a {' or '.join(cls.backbone_families)} backbone, not {backbone.name} ({backbone.family})"
        return None

    def __init__(self, backbone: Backbone, options: MethodOptions, views: dict | None = None,
                 input_size: tuple[int, ...] | None = None, n_images: int | None = None):
        """``views``: MedicalViews options; ``input_size``: the size images are resized to (default: the
        backbone's); ``n_images``: the number of training images, when known (MoCo caps its queue at it)."""
        super().__init__()
        self.backbone, self.options = backbone, options
        self.input_size = input_size or backbone.input_size
        self.views = MedicalViews(backbone.spatial_dims, backbone.in_chans, self.input_size, **(views or {}))

    def ssl_loss(self, images: torch.Tensor) -> torch.Tensor:
        """The method's objective on a batch of [0, 1] images (B, C, *spatial)."""
        raise NotImplementedError

    normalisation = DEFAULT  # the init's statistics for the data's channels, set by ``pretrain``; random init: 0.5/0.5

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """The init's normalisation, which the checkpoint records and fine-tuning then uses, so the weights always see
        inputs with the statistics they were trained on."""
        return self.normalisation(x)

    def after_backward(self) -> None:
        """Edit the gradients of the step in progress (e.g. freeze a head during the first epoch)."""

    def after_step(self, step: int, total_steps: int) -> None:
        """Called after optimiser step ``step`` (0-based) of ``total_steps`` (e.g. update a momentum encoder)."""

    def on_epoch(self, epoch: int, total_epochs: int) -> None:
        """Called before the first step of ``epoch`` (0-based) of ``total_epochs``; schedules that follow the epoch
        are set here, as a function of these two numbers only, so a resumed run recomputes them."""

    def step_logs(self) -> dict[str, torch.Tensor]:
        """Extra detached scalars of the last ``ssl_loss`` call for the driver to log (e.g. multi-SSL's parts)."""
        return {}
