"""The Lightning module that fine-tunes a ``Classifier`` under a strategy and evaluates it.

Batches arrive as (index, uint8 images, labels); preprocessing and augmentation run on the device after transfer.
Validation and test predictions are gathered across processes and de-duplicated by sample index, so metrics under
DDP are computed on exactly the split, not on a padded shard.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from medtransfer.config import TrainConfig
from medtransfer.data.transforms import Preprocess
from medtransfer.evaluate import compute_metrics
from medtransfer.finetune.policies import NO_POLICY, TrainingPolicy
from medtransfer.finetune.policies.loss import PolicyLoss
from medtransfer.finetune.strategies import Strategy
from medtransfer.models.heads import Classifier


class FineTuner(L.LightningModule):
    def __init__(self, model: Classifier, task: str, strategy: Strategy, view: str, train: TrainConfig,
                 preprocess: Preprocess, channels_last: bool = False, policy: TrainingPolicy = NO_POLICY,
                 criterion: PolicyLoss | None = None):
        super().__init__()
        self.model, self.task, self.strategy, self.view, self.cfg = model, task, strategy, view, train
        self.preprocess, self.channels_last = preprocess, channels_last
        # the training policy's batch mixing and loss (``policies/``); validation scores the plain loss
        self.policy, self.criterion = policy, criterion
        self._outputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.test_result: dict | None = None

    def forward(self, x):
        return self.model(x)

    def on_after_batch_transfer(self, batch, dataloader_idx: int = 0):
        idx, x, y = batch
        x = self.preprocess(x, train=self.trainer.training)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return idx, x, y

    def on_train_epoch_start(self):
        # Lightning >= 2.2 no longer calls train() when fit starts, and a strategy may have (un)frozen units since
        # the last call: re-apply the mode rule so frozen BatchNorm statistics never move.
        self.model.train()

    def loss(self, logits, y):
        if self.task == "multilabel":
            y = y.float()
            known = ~torch.isnan(y)  # NaN = an uncertain label under the "ignore" policy: no loss, no gradient
            return F.binary_cross_entropy_with_logits(logits[known], y[known]) if known.any() else logits.sum() * 0
        return F.cross_entropy(logits, y)

    def train_loss(self, logits, y):
        return self.loss(logits, y) if self.criterion is None else self.criterion(logits, y)

    def probabilities(self, logits):
        return torch.sigmoid(logits) if self.task == "multilabel" else torch.softmax(logits.float(), dim=1)

    def training_step(self, batch, batch_idx):
        _, x, y = batch
        mixed = self.policy.mix(x, y)
        if mixed is None:
            loss = self.train_loss(self(x), y)
        else:
            logits = self(mixed.x)
            loss = mixed.lam * self.train_loss(logits, y) + (1 - mixed.lam) * self.train_loss(logits, mixed.partner_y)
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=len(y), sync_dist=True)
        return loss

    def _collect(self, batch):
        idx, x, y = batch
        logits = self(x)
        self._outputs.append((idx, self.probabilities(logits).float(), y))
        return self.loss(logits, y)

    def validation_step(self, batch, batch_idx):
        loss = self._collect(batch)
        self.log("val/loss", loss, on_step=False, on_epoch=True, batch_size=len(batch[0]), sync_dist=True)

    def test_step(self, batch, batch_idx):
        self._collect(batch)

    def _gathered(self) -> tuple[np.ndarray, ...]:
        """All outputs of the epoch (sample index first) across processes, de-duplicated by index and sorted by it."""
        parts = [torch.cat(part) for part in zip(*self._outputs)]
        self._outputs.clear()
        if self.trainer.world_size > 1:
            parts = [t.flatten(0, 1) for t in self.all_gather(parts)]
        arrays = [t.cpu().numpy() for t in parts]
        _, first = np.unique(arrays[0], return_index=True)
        return tuple(a[first] for a in arrays)

    def on_validation_epoch_end(self):
        if not self._outputs:
            return
        _, probs, y = self._gathered()
        overall, _ = compute_metrics(self.task, y, probs)
        self.log_dict({f"val/{k}": float(v) for k, v in overall.items()}, sync_dist=False)

    def on_test_epoch_end(self):
        idx, probs, y = self._gathered()
        overall, per_class = compute_metrics(self.task, y, probs)
        self.test_result = {"metrics": overall, "per_class": per_class,
                            "predictions": {"index": idx, "y_true": y, "scores": probs}}

    def configure_optimizers(self):
        cfg = self.cfg
        groups = self.strategy.param_groups(self.model, cfg.lr, self.view)
        if cfg.optimizer == "sgd":
            opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        else:
            cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
            opt = cls(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        if cfg.schedule == "none":
            return opt
        if cfg.schedule == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
        else:
            milestones = sorted({max(1, round(m * cfg.epochs)) for m in cfg.milestones})
            sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=cfg.gamma)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
