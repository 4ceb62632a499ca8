"""The contract every self-supervised method fulfils (after solo-learn's ``BaseMethod``, kept small).

A method owns a backbone plus whatever heads its objective needs, turns a batch of [0, 1] images into a loss in
``ssl_loss``, and declares its options as a pydantic model so YAML typos fail before training. Optimisation
(AdamW + linear warm-up + cosine), view generation on the device and logging live here once.
"""

from __future__ import annotations

import math

import lightning as L
import torch
from pydantic import BaseModel, ConfigDict

from medtransfer.data.normalisation import DEFAULT
from medtransfer.data.transforms import MedicalViews, to_unit_range
from medtransfer.evaluate import compute_metrics
from medtransfer.models.backbones import Backbone
from medtransfer.pretrain.probe import OnlineProbe


class MethodOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BaseMethod(L.LightningModule):
    """Subclasses set ``Options``, ``family`` and what they support, and implement ``ssl_loss``."""

    Options: type[MethodOptions] = MethodOptions
    family = "contrastive"  # contrastive | restorative | predictive | multi: decides which depth ranges to try later
    spatial_dims: tuple[int, ...] = (2, 3)
    backbone_families: tuple[str, ...] = ("resnet", "vit", "unet_encoder")
    needs_labels = False  # True: ``ssl_loss(images, labels)`` receives the training labels (supervised method)

    @classmethod
    def unsupported(cls, backbone: Backbone) -> str | None:
        """Why this method cannot pre-train ``backbone`` (None when it can), checked before any training."""
        if backbone.spatial_dims not in cls.spatial_dims:
            return f"works on {'/'.join(f'{d}D' for d in cls.spatial_dims)} data, not {backbone.spatial_dims}D"
        if backbone.family not in cls.backbone_families:
            return f"needs a {' or '.join(cls.backbone_families)} backbone, not {backbone.name} ({backbone.family})"
        return None

    def __init__(self, backbone: Backbone, options: MethodOptions, views: dict, lr: float, weight_decay: float,
                 epochs: int, warmup_epochs: int, input_size: tuple[int, ...] | None = None,
                 probe: OnlineProbe | None = None):
        super().__init__()
        self.backbone, self.options, self.probe = backbone, options, probe
        self.input_size = input_size or backbone.input_size
        self.views = MedicalViews(backbone.spatial_dims, backbone.in_chans, self.input_size, **views)
        self.lr, self.weight_decay, self.epochs, self.warmup_epochs = lr, weight_decay, epochs, warmup_epochs
        self._probe_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def ssl_loss(self, images: torch.Tensor) -> torch.Tensor:
        """The method's objective on a batch of [0, 1] images (B, C, *spatial)."""
        raise NotImplementedError

    normalisation = DEFAULT  # the init's statistics for the data's channels, set by ``pretrain``; random init: 0.5/0.5

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """The init's normalisation, which the checkpoint records and fine-tuning then uses, so the weights always see
        inputs with the statistics they were trained on."""
        return self.normalisation(x)

    def training_step(self, batch, batch_idx):
        images = to_unit_range(batch[0], self.input_size)
        loss = self.ssl_loss(images, batch[1]) if self.needs_labels else self.ssl_loss(images)
        self.log("pretrain/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(images),
                 sync_dist=True)
        if self.probe is not None and len(batch) > 1:  # labels reach the probe only, through detached features
            with torch.no_grad():
                features = self.backbone(self.normalise(images))
            probe_loss = self.probe.loss(features, batch[1])
            self.log("probe/train_loss", probe_loss, on_step=False, on_epoch=True, batch_size=len(images),
                     sync_dist=True)
            loss = loss + probe_loss
        return loss

    def validation_step(self, batch, batch_idx):
        """Only the online probe validates: its scores on the labelled validation split."""
        if self.probe is not None:
            features = self.backbone(self.normalise(to_unit_range(batch[0], self.input_size)))
            self._probe_outputs.append((self.probe.scores(features).float(), batch[1]))

    def on_validation_epoch_end(self):
        if not self._probe_outputs:
            return
        scores, labels = (torch.cat(parts) for parts in zip(*self._probe_outputs))
        self._probe_outputs.clear()
        if self.trainer.world_size > 1:  # DistributedSampler may repeat a few samples: a monitoring figure only
            scores, labels = (t.flatten(0, 1) for t in self.all_gather((scores, labels)))
        overall, _ = compute_metrics(self.probe.task, labels.cpu().numpy(), scores.cpu().numpy(), ["auc", "acc"])
        self.log_dict({f"probe/val_{k}": float(v) for k, v in overall.items()})

    def configure_optimizers(self):
        opt = torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=self.lr,
                                weight_decay=self.weight_decay)
        steps_per_epoch = max(1, self.trainer.estimated_stepping_batches // max(1, self.trainer.max_epochs))
        warmup, total = self.warmup_epochs * steps_per_epoch, max(1, self.trainer.estimated_stepping_batches)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
