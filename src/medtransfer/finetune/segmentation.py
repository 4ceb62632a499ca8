"""Fine-tuning for segmentation: the same loop, strategies, model selection and DDP gathering as classification
(``FineTuner``), with a dense decoder, a Dice-family loss, patch training and sliding-window evaluation.

Training sees random patches (``train.segmentation.patch_size``), augmented jointly with their masks on the device.
Validation and test images are predicted whole, at native resolution, by MONAI's sliding-window inference with the
patch as window (Gaussian blending), so thin structures are never resized away. Metrics are computed per image
inside each process and only those small (images x classes) tables are gathered — never full probability maps.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from monai.losses import MaskedDiceLoss
from torch import nn
from torch.utils.data import TensorDataset

from medtransfer.config import SegmentationConfig, TrainConfig
from medtransfer.data.base import ImageDataset, Split
from medtransfer.data.normalisation import DEFAULT, Normalisation
from medtransfer.data.transforms import SegmentationPreprocess
from medtransfer.errors import ConfigError
from medtransfer.evaluate.segmentation import SEGMENTATION_METRICS, one_hot, per_image_scores, summarize
from medtransfer.finetune.module import FineTuner
from medtransfer.finetune.strategies import Strategy
from medtransfer.finetune.strategies.knn import KNN
from medtransfer.models.backbones import Backbone
from medtransfer.models.segmentation import SegmentationModel

MAX_STORED_PIXELS = 2**24  # test predictions (uint8 class maps) are stored when the test split is at most this big


def patch_size(data: ImageDataset, seg: SegmentationConfig) -> tuple[int, ...] | None:
    """The training patch as one size per spatial axis, checked against the images (None: whole images)."""
    if seg.patch_size is None:
        return None
    patch = (seg.patch_size,) * data.spatial_dims if isinstance(seg.patch_size, int) else tuple(seg.patch_size)
    if len(patch) != data.spatial_dims:
        raise ConfigError(f"train.segmentation.patch_size: {seg.patch_size} has {len(patch)} sizes; allowed: one "
                          f"size or {data.spatial_dims} (one per axis of {data.name})")
    if any(p > s for p, s in zip(patch, data.image_size)):
        raise ConfigError(f"train.segmentation.patch_size: {patch} is larger than the images of {data.name} "
                          f"{data.image_size}; allowed: at most the image size")
    return patch


def segmentation_input_size(data: ImageDataset, resize: int | None, seg: SegmentationConfig) -> tuple[int, ...]:
    """What the encoder sees: the patch (or the whole image); images are never resized, masks would lose detail."""
    if resize is not None:
        raise ConfigError(f"datasets ({data.name}).resize: {resize} rejected: segmentation is scored at native "
                          "resolution by sliding window; allowed: null (set train.segmentation.patch_size instead)")
    return patch_size(data, seg) or data.image_size


def segmentation_dataset(split: Split, indices: np.ndarray | None = None) -> TensorDataset:
    """(index, uint8 image, mask, field of view) quadruples; an absent FOV is the whole image."""
    idx = np.arange(len(split)) if indices is None else np.asarray(indices)
    fov = np.ones(split.labels.shape, bool) if split.fov is None else split.fov
    return TensorDataset(torch.from_numpy(idx), torch.from_numpy(split.images[idx]),
                         torch.from_numpy(split.labels[idx]), torch.from_numpy(np.ascontiguousarray(fov[idx])))


class SegmentationLoss(nn.Module):
    """``dice``: MONAI's Dice loss on softmax over foreground classes, computed over the whole batch (patches
    without foreground cannot blow up); ``dice_ce``: plus cross-entropy; ``bce``: one sigmoid channel with binary
    cross-entropy (binary masks, the study's DRIVE protocol), threshold 0.5. Pixels outside the FOV count nothing."""

    def __init__(self, kind: str, num_classes: int):
        super().__init__()
        if kind == "bce" and num_classes != 2:
            raise ConfigError(f"train.segmentation.loss: 'bce' needs background + one class, the data has "
                              f"{num_classes} classes; allowed: dice, dice_ce")
        self.kind, self.num_classes = kind, num_classes
        self.dice = MaskedDiceLoss(include_background=False, softmax=True, batch=True)

    @property
    def num_outputs(self) -> int:
        return 1 if self.kind == "bce" else self.num_classes

    def forward(self, logits: torch.Tensor, masks: torch.Tensor, fov: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.kind == "bce":
            return _masked_mean(F.binary_cross_entropy_with_logits(logits[:, 0], (masks == 1).float(),
                                                                   reduction="none"), fov)
        loss = self.dice(logits, one_hot(masks, self.num_classes, fov).float(), fov.unsqueeze(1).float())
        if self.kind == "dice_ce":
            loss = loss + _masked_mean(F.cross_entropy(logits, masks, reduction="none"), fov)
        return loss

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """Class-index map: argmax, or sigmoid > 0.5 (logit > 0) for ``bce``."""
        return (logits[:, 0] > 0).long() if self.kind == "bce" else logits.argmax(1)


def _masked_mean(values: torch.Tensor, fov: torch.Tensor) -> torch.Tensor:
    return (values * fov).sum() / fov.sum().clamp_min(1)


class SegmentationFineTuner(FineTuner):
    """``FineTuner`` for batches of (index, image, mask, FOV): shares its optimizer, schedule, BatchNorm rule and
    cross-process gathering; replaces the loss, the evaluation (sliding window, per-image metrics) and the result."""

    def __init__(self, model: SegmentationModel, loss: SegmentationLoss, strategy: Strategy, view: str,
                 train: TrainConfig, preprocess: SegmentationPreprocess, roi: tuple[int, ...] | None,
                 monitor: str, channels_last: bool = False, keep_masks: bool = False):
        super().__init__(model, "segmentation", strategy, view, train, preprocess, channels_last)
        self.loss_fn, self.roi, self.keep_masks = loss, roi, keep_masks
        self.val_names = ("dice", "iou", "hd95") if monitor == "hd95" else ("dice", "iou")  # hd95 costs CPU time
        self.names: tuple[str, ...] = ()

    def on_after_batch_transfer(self, batch, dataloader_idx: int = 0):
        idx, x, masks, fov = batch
        x, masks, fov = self.preprocess(x, masks, fov, train=self.trainer.training)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return idx, x, masks, fov

    def training_step(self, batch, batch_idx):
        _, x, masks, fov = batch
        loss = self.loss_fn(self(x), masks, fov)
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=len(x), sync_dist=True)
        return loss

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Whole-image logits: by sliding window over patch-sized windows, or in one pass without patches."""
        if self.roi is None:
            return self(x)
        return sliding_window_inference(x, self.roi, self.cfg.batch_size, self.model,
                                        overlap=self.cfg.segmentation.overlap, mode="gaussian")

    def _collect(self, batch, names: tuple[str, ...], keep_masks: bool = False):
        idx, x, masks, fov = batch
        logits = self.logits(x)
        pred = self.loss_fn.predict(logits)
        scores = per_image_scores(pred, masks, self.loss_fn.num_classes, fov, names)
        self.names = names
        self._outputs.append((idx, *scores.values(), *([pred.to(torch.uint8)] if keep_masks else [])))
        return self.loss_fn(logits, masks, fov)

    def validation_step(self, batch, batch_idx):
        loss = self._collect(batch, self.val_names)
        self.log("val/loss", loss, on_step=False, on_epoch=True, batch_size=len(batch[0]), sync_dist=True)

    def test_step(self, batch, batch_idx):
        self._collect(batch, tuple(SEGMENTATION_METRICS), keep_masks=self.keep_masks)

    def on_validation_epoch_end(self):
        if not self._outputs:
            return
        _, *tables = self._gathered()
        overall, _ = summarize(dict(zip(self.names, tables)))
        self.log_dict({f"val/{k}": float(v) for k, v in overall.items()}, sync_dist=False)

    def on_test_epoch_end(self):
        idx, *tables = self._gathered()
        masks = tables.pop() if self.keep_masks else None
        scores = dict(zip(self.names, tables))
        overall, per_class = summarize(scores)
        predictions = {"index": idx, **scores, **({"y_pred": masks} if masks is not None else {})}
        self.test_result = {"metrics": overall, "per_class": per_class, "predictions": predictions}


def build_segmentation(data: ImageDataset, backbone: Backbone, strategy: Strategy, view: str, train: TrainConfig,
                       monitor: str, channels_last: bool, normalisation: Normalisation = DEFAULT,
                       augment: str | None = None) -> tuple[SegmentationModel, SegmentationFineTuner]:
    """The model (backbone already prepared by the strategy) and its Lightning module, checked before training;
    images are normalised with the init's ``normalisation`` and augmented at ``augment`` (default train.augment)."""
    if isinstance(strategy, KNN):
        raise ConfigError(f"strategies: knn classifies whole images by neighbour votes; {data.name} is a "
                          "segmentation task; allowed there: the trained strategies (end_to_end, linear, range, ...)")
    seg = train.segmentation
    loss = SegmentationLoss(seg.loss, data.num_classes)
    model = SegmentationModel(backbone, loss.num_outputs, seg.decoder)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    roi = patch_size(data, seg)
    preprocess = SegmentationPreprocess(data.spatial_dims, data.num_classes, roi, augment=augment or train.augment,
                                        normalisation=normalisation)
    module = SegmentationFineTuner(model, loss, strategy, view, train, preprocess, roi, monitor, channels_last,
                                   keep_masks=data.test.labels.size <= MAX_STORED_PIXELS)
    return model, module
