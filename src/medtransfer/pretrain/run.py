"""``pretrain``: train a backbone with an SSL method on a dataset's images (never its labels) and write a checkpoint.

The checkpoint's metadata records the resolved config and its hash; calling ``pretrain`` again with the same config
reuses the finished checkpoint instead of training twice, which is what lets ``run`` treat a pre-training as an init.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from pydantic import ValidationError
from torch.utils.data import DataLoader, TensorDataset

from medtransfer.bench.store import config_hash
from medtransfer.config import PretrainConfig
from medtransfer.data import load_dataset
from medtransfer.data.transforms import MedicalViews
from medtransfer.errors import ConfigError, allowed
from medtransfer.finetune.train import trainer_kwargs
from medtransfer.models.checkpoint import (load_backbone_weights, read_metadata, read_weights, save_backbone,
                                           sha256_file)
from medtransfer.models.factory import create_backbone
from medtransfer.pretrain import METHODS

CHECKPOINT_NAME = "backbone.safetensors"


def resolved_pretrain_config(cfg: PretrainConfig) -> dict:
    """The config plus the content hash of its init, so a changed init file means a new pre-training."""
    resolved = cfg.model_dump(mode="json", exclude={"output", "hardware"})
    if cfg.init is not None:
        resolved["init_sha256"] = sha256_file(cfg.init) if cfg.init.exists() else None
    return resolved


def default_output(cfg: PretrainConfig, root: Path) -> Path:
    return Path(root) / f"{cfg.method}-{cfg.data.name}-{config_hash(resolved_pretrain_config(cfg))[:12]}"


def check_options(cfg: PretrainConfig):
    """Validate method options and view options before any data is loaded or any step taken."""
    method = METHODS[cfg.method]
    try:
        options = method.Options.model_validate(cfg.method_options)
    except ValidationError as err:
        first = err.errors()[0]
        raise ConfigError(f"method_options.{'.'.join(map(str, first['loc']))}: {first.get('input')!r} rejected: "
                          f"{first['msg']}; options of {cfg.method}: {allowed(method.Options.model_fields)}") from None
    accepted = set(inspect.signature(MedicalViews).parameters) - {"spatial_dims", "in_chans", "size"}
    unknown = set(cfg.views) - accepted
    if unknown:
        raise ConfigError(f"views: unknown option(s) {sorted(unknown)}; allowed: {allowed(accepted)}")
    return options


def pretrain(cfg: PretrainConfig, output: Path | None = None, verbose: bool = False) -> Path:
    """Pre-train (or reuse a finished pre-training) and return the path of the backbone checkpoint."""
    options = check_options(cfg)
    output = Path(output or cfg.output or default_output(cfg, Path("runs") / "pretrain"))
    checkpoint = output / CHECKPOINT_NAME
    key = config_hash(resolved_pretrain_config(cfg))
    if checkpoint.exists() and read_metadata(checkpoint).get("config_hash") == key:
        return checkpoint

    data = load_dataset(cfg.data.name, **cfg.data.options)
    input_size = (cfg.data.resize,) * data.spatial_dims if cfg.data.resize else data.image_size
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    backbone = create_backbone(cfg.backbone.name, data.in_chans, input_size, cfg.backbone.small_stem,
                               spatial_dims=data.spatial_dims)
    chain = []
    if cfg.init is not None:
        report = load_backbone_weights(backbone, read_weights(cfg.init), str(cfg.init))
        parent = read_metadata(cfg.init)
        chain = parent.get("init_chain", []) + [{"checkpoint": str(cfg.init), "method": parent.get("method"),
                                                 "dataset": parent.get("dataset"), "adapted": report["adapted"]}]
    problem = METHODS[cfg.method].unsupported(backbone)
    if problem:
        raise ConfigError(f"method: {cfg.method!r} {problem}; allowed methods for this backbone: "
                          f"{allowed(n for n, m in METHODS.items() if m.unsupported(backbone) is None)}")
    method = METHODS[cfg.method](backbone, options, views=cfg.views, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                 epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs, input_size=input_size)

    images = torch.from_numpy(data.train.images)  # labels are deliberately not passed on
    batch_size = min(cfg.batch_size, len(images))
    loader = DataLoader(TensorDataset(images), batch_size=batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(cfg.seed))
    output.mkdir(parents=True, exist_ok=True)
    if not verbose:
        logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    trainer = L.Trainer(max_epochs=cfg.epochs, default_root_dir=output, logger=CSVLogger(output, name="", version=""),
                        enable_checkpointing=False, enable_progress_bar=verbose, enable_model_summary=False,
                        log_every_n_steps=1, **trainer_kwargs(cfg.hardware, data.spatial_dims))
    trainer.fit(method, loader)
    if trainer.is_global_zero:
        save_backbone(backbone, checkpoint, method=cfg.method, family=method.family, dataset=cfg.data.name,
                      epochs=cfg.epochs, config=resolved_pretrain_config(cfg), config_hash=key, init_chain=chain,
                      final_loss=float(trainer.callback_metrics.get("pretrain/loss", float("nan"))))
    trainer.strategy.barrier("pretrain checkpoint written")  # under DDP, other ranks read it next
    return checkpoint
