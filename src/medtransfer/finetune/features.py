"""Frozen-backbone features, extracted once and cached on disk.

A linear probe or k-NN over a frozen backbone needs the backbone's output for every image, and that output never
changes during the run: computing it once instead of every epoch saves (epochs - 1) passes over train and val.
The same holds for a frozen *prefix* (the units below a trained depth range): its output maps are cached likewise
and the trained rest of the network runs on them.
An entry is keyed by everything that changes the numbers — the backbone's weights *as loaded* (a content hash, so
a random init per seed and a re-exported checkpoint are told apart correctly), the images of each split (content
hash), the input size and how images are resized to it (``resize_mode``; a ``linear`` key holds no mode, as
before there was a choice, so existing entries stay valid), the depth view, what is cached (pooled features or the
output of the first ``n`` steps), the normalisation (mean/std), precision and memory format — and lives in
``<cache root>/features/<key>/`` (``train.npy``, ``val.npy``, ``test.npy`` float32 and a readable
``meta.json``). It is written into a temporary folder and renamed into place, so a crash or a second process
extracting the same key never leaves a half-written entry: whoever renames first wins, the other one's copy is
discarded.

Extraction runs the backbone in eval mode (frozen BatchNorm normalises with its running statistics, exactly as
``Classifier.train`` holds it during per-epoch training) under the same Lightning precision and memory format as
fine-tuning, without augmentation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from medtransfer.cache import cache_root
from medtransfer.data.base import SPLITS, ImageDataset
from medtransfer.data.transforms import Preprocess
from medtransfer.models.backbones import Backbone

log = logging.getLogger(__name__)
FORMAT_VERSION = 1  # bump when the stored layout or the extraction itself changes
_image_digests: dict[int, tuple[weakref.ref, str]] = {}


@dataclass(frozen=True)
class FeatureSpec:
    """How features are computed, minus the weights and images (hashed separately)."""

    input_size: tuple[int, ...]
    view: str
    steps: int | None  # None: the pooled output of the whole backbone; n: the output map of its first n steps
    mean: float | tuple[float, ...]
    std: float | tuple[float, ...]
    precision: str
    channels_last: bool
    resize_mode: str = "linear"  # how ``preprocess`` brings images to ``input_size`` (``transforms.to_unit_range``)

    @classmethod
    def of(cls, preprocess: Preprocess, input_size, view: str, precision: str, channels_last: bool,
           steps: int | None = None):
        return cls(tuple(int(s) for s in input_size), view, steps, _plain(preprocess.mean), _plain(preprocess.std),
                   precision, channels_last, preprocess.resize_mode)

    def encode(self, backbone: Backbone, x: torch.Tensor) -> torch.Tensor:
        """What is cached for a normalised batch: pooled features, or the map after the first ``steps`` steps."""
        if self.steps is None:
            return backbone(x)
        for step in backbone.steps[: self.steps]:
            x = backbone.run_step(step, x)
        return x


def _plain(value) -> float | tuple[float, ...]:
    """mean/std as a scalar, sequence or tensor -> plain floats, so the key's JSON is stable."""
    values = torch.as_tensor(value, dtype=torch.float64).flatten().tolist()
    return values[0] if len(values) == 1 else tuple(values)


def features_root() -> Path:
    return cache_root() / "features"


def weights_digest(backbone: Backbone) -> str:
    """sha256 over every parameter and buffer of the backbone (name, dtype, shape, bytes), in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(backbone.model.state_dict().items()):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def images_digest(images: np.ndarray) -> str:
    """sha256 of an image array (shape, dtype, bytes), remembered per array object: a grid asks for it every run."""
    hit = _image_digests.get(id(images))
    if hit is not None and hit[0]() is images:
        return hit[1]
    digest = hashlib.sha256(f"{images.shape}|{images.dtype}|".encode())
    digest.update(np.ascontiguousarray(images).data)
    _image_digests[id(images)] = (weakref.ref(images), digest.hexdigest())
    return _image_digests[id(images)][1]


def feature_key(backbone: Backbone, data: ImageDataset, spec: FeatureSpec) -> tuple[str, dict]:
    """The cache key and the description stored beside the features."""
    meta = {"format": FORMAT_VERSION, "backbone": backbone.name, "small_stem": backbone.small_stem,
            "steps": [s.name for s in backbone.steps], "weights_sha256": weights_digest(backbone),
            "dataset": data.name, "images_sha256": {s: images_digest(getattr(data, s).images) for s in SPLITS},
            "input_size": list(spec.input_size), "view": spec.view, "cached_steps": spec.steps, "mean": spec.mean,
            "std": spec.std, "precision": spec.precision, "channels_last": spec.channels_last,
            **({} if spec.resize_mode == "linear" else {"resize_mode": spec.resize_mode})}  # linear: keys as before
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:32], meta


class _Extractor(L.LightningModule):
    def __init__(self, backbone: Backbone, preprocess: Preprocess, spec: FeatureSpec):
        super().__init__()
        self.backbone, self.preprocess, self.spec = backbone, preprocess, spec

    def predict_step(self, batch, batch_idx):
        x = self.preprocess(batch[0], train=False)
        if self.spec.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.spec.encode(self.backbone, x).float().cpu()


def extract(backbone: Backbone, data: ImageDataset, preprocess: Preprocess, spec: FeatureSpec, trainer_kwargs: dict,
            batch_size: int) -> dict[str, np.ndarray]:
    """``spec.encode`` float32 of every image of every split, on one device, eval mode, no augmentation."""
    if spec.channels_last:
        backbone.to(memory_format=torch.channels_last)
    kwargs = {**trainer_kwargs, "devices": 1, "num_nodes": 1, "strategy": "auto"}
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, **kwargs)
    module = _Extractor(backbone, preprocess, spec)
    out = {}
    for split in SPLITS:
        images = torch.from_numpy(getattr(data, split).images)
        batches = trainer.predict(module, DataLoader(TensorDataset(images), batch_size=batch_size))
        out[split] = np.ascontiguousarray(torch.cat(batches).numpy(), dtype=np.float32)  # channels_last: strided
    return out


def cached_features(backbone: Backbone, data: ImageDataset, preprocess: Preprocess, spec: FeatureSpec,
                    trainer_kwargs: dict, batch_size: int) -> dict[str, np.ndarray]:
    """Features of every split, read from the cache or extracted once and stored there."""
    key, meta = feature_key(backbone, data, spec)
    folder = features_root() / key
    stored = _load(folder)
    if stored is not None:
        log.info("frozen features: cache hit %s", folder)
        return stored
    features = extract(backbone, data, preprocess, spec, trainer_kwargs, batch_size)
    _store(folder, features, meta)
    log.info("frozen features: extracted once into %s", folder)
    return features


def _load(folder: Path) -> dict[str, np.ndarray] | None:
    if not folder.is_dir():
        return None
    try:
        return {s: np.load(folder / f"{s}.npy", allow_pickle=False) for s in SPLITS}
    except (OSError, ValueError) as err:  # a damaged entry is rebuilt, not trusted
        log.warning("frozen features: unreadable cache entry %s (%s); extracting again", folder, err)
        shutil.rmtree(folder, ignore_errors=True)
        return None


def _store(folder: Path, features: dict[str, np.ndarray], meta: dict) -> None:
    """Write into a temporary sibling folder, then rename it into place (atomic on one file system)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    try:
        for split, array in features.items():
            np.save(tmp / f"{split}.npy", array)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
        os.rename(tmp, folder)
    except OSError:
        if not folder.is_dir():  # a real failure, not another process having stored the same key first
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
