"""``pretrain``: train a backbone with an SSL method on a dataset's images (never its labels) and write a checkpoint.

The checkpoint's metadata records the resolved config and its hash; calling ``pretrain`` again with the same config
reuses the finished checkpoint instead of training twice, which is what lets ``run`` treat a pre-training as an init.
"""

from __future__ import annotations

import inspect
import logging
import shutil
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from pydantic import ValidationError
from torch.utils.data import DataLoader, TensorDataset

from medtransfer.bench.store import config_hash
from medtransfer.config import PretrainConfig, WeightsSource
from medtransfer.data import identity_options, load_dataset
from medtransfer.data.base import CLASSIFICATION_TASKS
from medtransfer.data.normalisation import DEFAULT, Normalisation
from medtransfer.data.transforms import MedicalViews
from medtransfer.errors import ConfigError, allowed
from medtransfer.finetune.resume import check_loadable
from medtransfer.finetune.train import trainer_kwargs
from medtransfer.models.checkpoint import read_metadata, save_backbone, sha256_file
from medtransfer.models.factory import create_backbone
from medtransfer.models.zoo import init_normalisation, load_init, resolve_weights
from medtransfer.pretrain import METHODS
from medtransfer.pretrain.base import BaseMethod
from medtransfer.pretrain.module import PretrainModule
from medtransfer.pretrain.probe import OnlineProbe
from medtransfer.pretrain.resume import RandomStates, carries_random_states

log = logging.getLogger(__name__)
CHECKPOINT_NAME = "backbone.safetensors"
# Written by every pre-training since the online probe only observes; a checkpoint without it whose log shows the
# probe ran holds a backbone the probe perturbed (BatchNorm statistics, random draws) and is trained again.
PROBE_ISOLATED = "probe_isolated"


def _init_source(cfg: PretrainConfig) -> WeightsSource | None:
    if cfg.init is None:
        return None
    return cfg.init if isinstance(cfg.init, WeightsSource) else WeightsSource(checkpoint=cfg.init)


def resolve_init(cfg: PretrainConfig) -> tuple[Path, str] | None:
    """(file, lineage label) of the weights a continual pre-training starts from: a file, zoo or timm name."""
    source = _init_source(cfg)
    return None if source is None else resolve_weights(source.zoo, source.timm, source.checkpoint, key="init")


def pretrain_init_normalisation(cfg: PretrainConfig) -> Normalisation:
    """The init's input statistics (per channel of its weights); 0.5 / 0.5 without an init."""
    source = _init_source(cfg)
    if source is None:
        return DEFAULT
    return init_normalisation(source.zoo, source.timm, resolve_init(cfg)[0] if source.checkpoint else None,
                              source.normalisation)


def resolved_pretrain_config(cfg: PretrainConfig) -> dict:
    """The config plus the content hash of its init, so a changed init file means a new pre-training, and the
    init's normalisation where it is not 0.5 / 0.5 (so pre-trainings that always used 0.5 / 0.5 keep their hash).
    The online probe only watches, so it does not change the identity of a pre-training."""
    resolved = cfg.model_dump(mode="json", exclude={"output", "hardware", "online_probe"})
    resolved["data"]["options"] = identity_options(resolved["data"]["options"])
    resolved["data"].pop("resize_mode")  # pre-training always resizes linearly (``check`` refuses another mode)
    if isinstance(resolved.get("init"), dict) and resolved["init"].get("normalisation") is None:
        resolved["init"].pop("normalisation", None)  # unset: the hash of pre-trainings from before the setting
    if cfg.init is not None:
        resolved["init_sha256"] = sha256_file(resolve_init(cfg)[0])
        normalisation = pretrain_init_normalisation(cfg)
        if not normalisation.is_default:
            resolved["init_normalisation"] = normalisation.to_dict()
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


def check_data(cfg: PretrainConfig, data) -> None:
    """Label-dependent parts (a supervised method, the online probe) need per-image class labels and, for the probe,
    a validation split; refused here so an experiment fails before its first pre-training, not in the middle."""
    if METHODS[cfg.method].needs_labels and data.task not in CLASSIFICATION_TASKS:
        raise ConfigError(f"method: {cfg.method!r} trains on labels, but {cfg.data.name} has task {data.task!r}; "
                          f"allowed: a dataset with task {', '.join(CLASSIFICATION_TASKS)}")
    if cfg.online_probe and (data.task not in CLASSIFICATION_TASKS or len(data.val) == 0):
        raise ConfigError(f"online_probe: true needs class labels and a validation split, but {cfg.data.name} has "
                          f"task {data.task!r} with {len(data.val)} validation images; allowed: online_probe: false")


def probe_perturbed(checkpoint: Path) -> bool:
    """Whether ``checkpoint`` was pre-trained with an online probe that still updated the backbone's BatchNorm
    statistics and moved its random draws: no ``probe_isolated`` marker, and a ``probe/`` column in the log beside
    it. Probe-off pre-trainings (no such column) stay valid whatever their age."""
    log_file = checkpoint.parent / "metrics.csv"
    if PROBE_ISOLATED in read_metadata(checkpoint) or not log_file.exists():
        return False
    with open(log_file) as f:
        return any(column.startswith("probe/") for column in f.readline().strip().split(","))


def _resume_point(output: Path, key: str, resume: bool | str) -> Path | None:
    """The Lightning checkpoint to continue from: required with resume=True, used when present with "auto"."""
    last, stamp = output / "lightning" / "last.ckpt", output / "lightning" / "config_hash"
    if resume is False or (resume == "auto" and not last.exists()):
        return None
    if not last.exists():
        raise ConfigError(f"--resume: {output} holds no interrupted pre-training ({last} is missing)")
    if not stamp.exists() or stamp.read_text().strip() != key:
        if resume == "auto":
            return None
        raise ConfigError(f"--resume: the config differs from the one {output} was started with; "
                          "use another output folder, or the original config")
    start_over = f"delete {last.parent} to start this pre-training over"
    state = check_loadable(last, start_over)  # a planted pickle: refused
    if not carries_random_states(state):  # older state: a resume would replay epoch 0's data order and views
        if resume == "auto":
            log.warning("%s: written before resumes restored random states; starting over", last)
            return None
        raise ConfigError(f"--resume: {last} was written without the random states an exact resume needs; "
                          f"{start_over}, or use --no-resume")
    return last


def _read_log(output: Path):
    import pandas as pd
    path = output / "metrics.csv"
    return pd.read_csv(path) if path.exists() else None


def _merge_log(output: Path, earlier):
    """Lightning's CSV logger starts a resumed run's log afresh; put the epochs before the resume point back."""
    import pandas as pd
    resumed = pd.read_csv(output / "metrics.csv")
    kept = earlier[earlier["epoch"] < resumed["epoch"].min()]
    pd.concat([kept, resumed], ignore_index=True).to_csv(output / "metrics.csv", index=False)


class PretrainPlan:
    """One pre-training: checked once (``check``), then run (``run``) from what the check built.

    ``run experiment`` checks every pre-training init before any training and runs them later; ``pretrain`` does
    both at once. Either way the options, the init, the dataset (one object per process) and the method's support
    for the backbone are checked in one place and the dataset is loaded once. ``where`` prefixes error messages
    with the experiment key that holds the pre-training (e.g. ``inits (simclr): ``).
    """

    def __init__(self, cfg: PretrainConfig, where: str = ""):
        self.cfg, self.where = cfg, where
        self.key = config_hash(resolved_pretrain_config(cfg))
        self.data = None

    def check(self) -> "PretrainPlan":
        """Everything that can fail before a step is taken; nothing is trained or written."""
        cfg = self.cfg
        self.options = check_options(cfg)
        if cfg.data.resize_mode != "linear":
            raise ConfigError(f"{self.where}data.resize_mode: {cfg.data.resize_mode!r}; allowed: linear (the views "
                              "of pre-training resize linearly; nearest is a fine-tuning setting)")
        self.init = resolve_init(cfg)  # a missing init file or an uncached zoo model fails here
        self.init_normalisation = pretrain_init_normalisation(cfg)
        self.data = load_dataset(cfg.data.name, **cfg.data.options)
        self.input_size = (cfg.data.resize,) * self.data.spatial_dims if cfg.data.resize else self.data.image_size
        check_data(cfg, self.data)
        problem = METHODS[cfg.method].unsupported(self.backbone())
        if problem:
            raise ConfigError(f"{self.where}method: {cfg.method!r} {problem}; allowed methods for this backbone: "
                              f"{allowed(n for n, m in METHODS.items() if m.unsupported(self.backbone()) is None)}")
        return self

    def backbone(self):
        """A fresh backbone of the pre-training's architecture for its data (random weights)."""
        return create_backbone(self.cfg.backbone.name, self.data.in_chans, self.input_size,
                               self.cfg.backbone.small_stem, spatial_dims=self.data.spatial_dims)

    def finished(self, output: Path) -> Path | None:
        """The checkpoint of this very config in ``output``, if it was written (then nothing needs training)."""
        checkpoint = Path(output) / CHECKPOINT_NAME
        if not checkpoint.exists() or read_metadata(checkpoint).get("config_hash") != self.key:
            return None
        if probe_perturbed(checkpoint):
            log.warning("%s: pre-trained with an online probe that changed its backbone (before the probe only "
                        "observed); pre-training it again", checkpoint)
            return None
        return checkpoint

    def run(self, output: Path, verbose: bool = False, resume: bool | str = "auto") -> Path:
        """Pre-train into ``output`` (or reuse its finished checkpoint); returns the checkpoint's path."""
        cfg, output = self.cfg, Path(output)
        checkpoint = output / CHECKPOINT_NAME
        if self.finished(output):
            if resume is True:
                raise ConfigError(f"--resume: the pre-training in {output} already finished ({checkpoint})")
            return checkpoint
        resume_from = _resume_point(output, self.key, resume)
        if self.data is None:
            self.check()
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        backbone = self.backbone()
        chain, lineage = self._start_from_init(backbone)
        module = self._module(backbone)
        trainer, resumed_from = self._fit(module, output, resume_from, verbose)
        if trainer.is_global_zero:
            save_backbone(backbone, checkpoint, method=cfg.method, family=module.method.family,
                          dataset=cfg.data.name, epochs=cfg.epochs, config=resolved_pretrain_config(cfg),
                          config_hash=self.key, init_chain=chain, lineage=lineage + [cfg.data.name, cfg.method],
                          normalisation=self.init_normalisation.for_channels(self.data.in_chans).to_dict(),
                          final_loss=float(trainer.callback_metrics.get("pretrain/loss", float("nan"))),
                          online_probe=cfg.online_probe, resumed_from_epochs=resumed_from, **{PROBE_ISOLATED: True})
            shutil.rmtree(output / "lightning", ignore_errors=True)  # finished: the resume state is no longer needed
        trainer.strategy.barrier("pretrain checkpoint written")  # under DDP, other ranks read it next
        return checkpoint

    def _start_from_init(self, backbone) -> tuple[list, list]:
        """Load the continual pre-training's init into ``backbone``; returns its (init chain, lineage)."""
        if self.init is None:
            return [], []
        path, label = self.init
        report = load_init(backbone, path, normalisation=self.init_normalisation)
        parent = read_metadata(path)
        chain = parent.get("init_chain", []) + [{"checkpoint": str(path), "source": label,
                                                 "method": parent.get("method"), "dataset": parent.get("dataset"),
                                                 "adapted": report["adapted"]}]
        return chain, parent.get("lineage") or [label]  # e.g. ["imagenet_supervised (zoo)"]

    def _module(self, backbone) -> PretrainModule:
        """The method on ``backbone``, fed the init's normalisation, inside the one Lightning module that drives it."""
        cfg, data = self.cfg, self.data
        method_cls = METHODS[cfg.method]
        labels_info = {"task": data.task, "num_classes": data.num_classes} if method_cls.needs_labels else {}
        method = method_cls(backbone, self.options, views=cfg.views, input_size=self.input_size,
                            n_images=len(data.train), **labels_info)
        probe = None
        if cfg.online_probe:
            # built on the CPU, after the method, on a forked state: the method's draws stay those of a probe-off run
            with torch.random.fork_rng(devices=[]):
                probe = OnlineProbe(backbone.num_features, data.task, data.num_classes)
        normalisation = self.init_normalisation.for_channels(data.in_chans)
        for part in method.modules():  # multi_ssl's sub-methods normalise for themselves
            if isinstance(part, BaseMethod):
                part.normalisation = normalisation
        return PretrainModule(method, lr=cfg.lr, weight_decay=cfg.weight_decay, epochs=cfg.epochs,
                              warmup_epochs=cfg.warmup_epochs, probe=probe)

    def _fit(self, module: PretrainModule, output: Path, resume_from: Path | None,
             verbose: bool) -> tuple[L.Trainer, list[int]]:
        """Train; returns the trainer and the epochs this run was resumed at."""
        cfg, data = self.cfg, self.data
        # Labels travel only to the online probe (detached features) and to methods that train on them (supervised).
        with_labels = module.probe is not None or module.method.needs_labels
        train_tensors = (torch.from_numpy(data.train.images),) + (
            (torch.from_numpy(data.train.labels),) if with_labels else ())
        batch_size = min(cfg.batch_size, len(data.train))
        order = torch.Generator().manual_seed(cfg.seed)
        loader = DataLoader(TensorDataset(*train_tensors), batch_size=batch_size, shuffle=True, drop_last=True,
                            generator=order)
        # its own generator: iterating a loader draws a seed, which must not come from the global random state
        val_loader = DataLoader(TensorDataset(torch.from_numpy(data.val.images), torch.from_numpy(data.val.labels)),
                                batch_size=max(256, batch_size),
                                generator=torch.Generator().manual_seed(cfg.seed)) if module.probe else None
        (output / "lightning").mkdir(parents=True, exist_ok=True)
        (output / "lightning" / "config_hash").write_text(self.key)
        if not verbose:
            logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
        last_epoch = ModelCheckpoint(dirpath=output / "lightning", filename="last", save_top_k=1,  # for resume
                                     enable_version_counter=False)
        random_states = RandomStates(order)
        trainer = L.Trainer(max_epochs=cfg.epochs, default_root_dir=output,
                            logger=CSVLogger(output, name="", version=""), callbacks=[random_states, last_epoch],
                            enable_progress_bar=verbose, enable_model_summary=False, num_sanity_val_steps=0,
                            log_every_n_steps=1, **trainer_kwargs(cfg.hardware, data.spatial_dims))
        earlier_log = _read_log(output) if resume_from else None
        trainer.fit(module, loader, val_loader, ckpt_path=resume_from, weights_only=True)  # tensors and plain data
        if earlier_log is not None and trainer.is_global_zero:
            _merge_log(output, earlier_log)
        return trainer, random_states.resumed_from


def pretrain(cfg: PretrainConfig, output: Path | None = None, verbose: bool = False,
             resume: bool | str = "auto") -> Path:
    """Pre-train (or reuse a finished pre-training) and return the path of the backbone checkpoint.

    ``resume`` continues an interrupted run of the *same* config from its last epoch (True: required, "auto":
    when one exists, False: start over); ``cfg.init`` instead starts a *new* run from other weights.
    """
    check_options(cfg)  # before a folder is derived from the config
    output = Path(output or cfg.output or default_output(cfg, Path("runs") / "pretrain"))
    return PretrainPlan(cfg).run(output, verbose, resume)

