"""The one Lightning module that pre-trains with any method: optimisation (AdamW + linear warm-up + cosine), the
online probe and logging live here once, and the method's own per-step and per-epoch behaviour is driven through its
contract (``BaseMethod.after_backward`` / ``after_step`` / ``on_epoch``) with the step and epoch passed explicitly.

Lightning calls hooks on the top-level module only; driving the method's hooks from here, and having ``MultiSSL``
forward them, is what makes a momentum encoder or an epoch schedule behave the same alone and inside multi-SSL.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import lightning as L
import torch
from torch import nn

from medtransfer.data.transforms import to_unit_range
from medtransfer.evaluate import compute_metrics
from medtransfer.pretrain.base import BaseMethod
from medtransfer.pretrain.probe import OnlineProbe


BUFFERS_KEY = "method_non_persistent_buffers"


@contextmanager
def observing(backbone: nn.Module):
    """The backbone in eval mode while the online probe looks at it, each module's mode restored after: the probe's
    extra forward then neither updates BatchNorm running statistics nor draws dropout / drop-path randomness, so
    a pre-training with the probe saves the same backbone as one without."""
    modes = [(module, module.training) for module in backbone.modules()]
    backbone.eval()
    try:
        yield backbone
    finally:
        for module, training in modes:
            module.train(training)


def _non_persistent_buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    persistent = module.state_dict().keys()
    return {name: buffer for name, buffer in module.named_buffers() if name not in persistent}


class PretrainModule(L.LightningModule):
    def __init__(self, method: BaseMethod, lr: float, weight_decay: float, epochs: int, warmup_epochs: int,
                 probe: OnlineProbe | None = None):
        super().__init__()
        self.method, self.probe = method, probe
        self.lr, self.weight_decay, self.epochs, self.warmup_epochs = lr, weight_decay, epochs, warmup_epochs
        self._probe_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def on_train_epoch_start(self):
        self.method.on_epoch(self.current_epoch, self.epochs)

    def training_step(self, batch, batch_idx):
        images = to_unit_range(batch[0], self.method.input_size)
        loss = self.method.ssl_loss(images, batch[1]) if self.method.needs_labels else self.method.ssl_loss(images)
        self.log("pretrain/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(images),
                 sync_dist=True)
        for key, value in self.method.step_logs().items():
            self.log(f"pretrain/{key}", value, on_step=False, on_epoch=True, batch_size=len(images), sync_dist=True)
        if self.probe is not None and len(batch) > 1:  # labels reach the probe only, through detached features
            with torch.no_grad(), observing(self.method.backbone):
                features = self.method.backbone(self.method.normalise(images))
            probe_loss = self.probe.loss(features, batch[1])
            self.log("probe/train_loss", probe_loss, on_step=False, on_epoch=True, batch_size=len(images),
                     sync_dist=True)
            loss = loss + probe_loss
        return loss

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Non-persistent buffers too (lightly's MoCo memory bank and its pointer): a resume without them would
        start from a fresh random queue."""
        checkpoint[BUFFERS_KEY] = {name: buffer.detach().cpu().clone()
                                   for name, buffer in _non_persistent_buffers(self.method).items()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        for name, value in checkpoint.get(BUFFERS_KEY, {}).items():
            self.method.get_buffer(name).copy_(value)

    def on_after_backward(self):
        self.method.after_backward()

    def on_train_batch_end(self, outputs, batch, batch_idx):
        """One batch is one optimiser step; ``global_step`` has already counted it."""
        self.method.after_step(self.global_step - 1, self.trainer.estimated_stepping_batches)

    def validation_step(self, batch, batch_idx):
        """Only the online probe validates: its scores on the labelled validation split."""
        if self.probe is not None:
            features = self.method.backbone(self.method.normalise(to_unit_range(batch[0], self.method.input_size)))
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
        """AdamW over what requires grad (momentum twins do not: they stay out), warm-up then cosine per step."""
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
