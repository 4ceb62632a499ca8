"""Experiment and pre-training files as typed models, validated before anything runs (read by ``config_files``).

Every error names the key, the bad value and what is allowed. Relative paths are relative to the YAML file, so an
experiment folder can be moved or shared as a whole.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import (AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationInfo,
                      field_validator, model_validator)
from typing_extensions import Annotated

from medtransfer.errors import allowed
from medtransfer.imbalance import ImbalanceConfig
from medtransfer.seeds import Seed


def _relative_to_file(value: Optional[Path], info: ValidationInfo) -> Optional[Path]:
    base = (info.context or {}).get("base")
    if value is None or base is None or value.is_absolute():
        return value
    return (Path(base) / value).resolve()


FilePath = Annotated[Path, AfterValidator(_relative_to_file)]


def _registered(name: str, registry: dict, what: str) -> str:
    if name not in registry:
        raise ValueError(f"unknown {what} {name!r}; allowed: {allowed(registry)}")
    return name


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetConfig(Strict):
    """A dataset by registry name; any other key is an option of its loader (``root``, ``size``, ``n_train`` ...)."""

    name: str
    resize: Optional[int] = Field(None, ge=8, description="network input size; e.g. 224 for MedMNIST '(224)'")
    resize_mode: Literal["linear", "nearest"] = Field(
        "linear", description="how resize interpolates: (bi/tri)linear, or nearest (MedMNIST v2's '(224)' rows)")
    options: dict[str, Any] = {}

    @model_validator(mode="before")
    @classmethod
    def _collect_options(cls, data: Any, info: ValidationInfo):
        if isinstance(data, str):
            data = {"name": data}
        if isinstance(data, dict):
            data = dict(data)
            options = dict(data.pop("options", {}) or {})
            options.update({k: data.pop(k) for k in list(data) if k not in cls.model_fields})
            base = (info.context or {}).get("base")
            if base is not None and "root" in options and not Path(options["root"]).expanduser().is_absolute():
                options["root"] = str((Path(base) / options["root"]).resolve())
            data["options"] = options
        return data

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        from medtransfer.data import DATASETS
        return _registered(name, DATASETS, "dataset")


class BackboneConfig(Strict):
    name: str = "resnet18"
    small_stem: bool = False
    view: Optional[str] = Field(None, description="depth-unit convention; default: the backbone's first view")

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        from medtransfer.models.factory import backbone_spec
        backbone_spec(name)
        return name


class SegmentationConfig(Strict):
    """How segmentation datasets are trained and scored (ignored for classification)."""

    decoder: Literal["unet", "fpn", "swin_unetr", "segresnet"] = Field(
        "unet", description="swin_unetr / segresnet: MONAI's own decoder of that 3D encoder")
    loss: Literal["dice", "dice_ce", "bce"] = Field("dice_ce", description="bce: sigmoid, 2-class datasets only")
    patch_size: Optional[Union[int, list[int]]] = Field(
        None, description="train on random patches of this size, evaluate by sliding window; null: whole images")
    overlap: float = Field(0.25, ge=0, lt=1, description="sliding-window overlap between neighbouring patches")

    @field_validator("patch_size")
    @classmethod
    def _positive(cls, value):
        sizes = [value] if isinstance(value, int) else (value or [])
        if any(s < 8 for s in sizes):
            raise ValueError(f"patch sizes must be >= 8 pixels, got {value}")
        return value


class TrainConfig(Strict):
    """Fine-tuning schedule. Defaults are the MedMNIST v2 protocol (Adam 1e-3, batch 128, 100 epochs, lr x0.1 at
    50 % and 75 %, no augmentation, model selected on validation AUC; Dice for segmentation)."""

    epochs: int = Field(100, ge=1)
    batch_size: int = Field(128, ge=1)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    schedule: Literal["multistep", "cosine", "none"] = "multistep"
    milestones: list[float] = Field([0.5, 0.75], description="fractions of the epochs, each in (0, 1)")
    gamma: float = Field(0.1, gt=0)
    monitor: Optional[str] = Field(None, description="default: auc (classification), dice (segmentation)")
    early_stopping_patience: Optional[int] = Field(None, ge=1)
    min_samples_per_epoch: int = Field(0, ge=0, description="repeat a small labelled subset to this many per epoch")
    augment: Literal["none", "flip", "light"] = "none"
    dropout: float = Field(0.0, ge=0, lt=1)
    keep_checkpoints: bool = False
    segmentation: SegmentationConfig = SegmentationConfig()

    @field_validator("monitor")
    @classmethod
    def _metric(cls, name: Optional[str]) -> Optional[str]:
        from medtransfer.evaluate import METRICS, SEGMENTATION_METRICS
        names = [*METRICS, *SEGMENTATION_METRICS, "loss"]
        if name is not None and name not in names:
            raise ValueError(f"unknown metric {name!r}; allowed: {allowed(names)}")
        return name

    @field_validator("milestones")
    @classmethod
    def _fractions_of_training(cls, milestones: list[float]) -> list[float]:
        bad = [m for m in milestones if not 0 < m < 1]
        if bad:  # e.g. 50 meant as epoch 50: epoch 50 * epochs never comes, the lr never drops
            raise ValueError(f"{bad} outside (0, 1); allowed: fractions of train.epochs, e.g. [0.5, 0.75]")
        return milestones


class HardwareConfig(Strict):
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    devices: Union[int, Literal["auto"]] = 1
    num_nodes: int = Field(1, ge=1)
    ddp: bool = False
    precision: Literal["auto", "32-true", "16-mixed", "bf16-mixed"] = "auto"
    channels_last: bool = True
    deterministic: bool = True
    executor: Literal["sequential", "ray"] = Field(
        "sequential", description="sequential: runs one after another in this process; ray: runs as Ray tasks")
    workers: Optional[int] = Field(None, ge=1, description="ray: runs at a time (default: as the cluster's "
                                                           "resources allow)")
    address: Optional[str] = Field(None, description="ray: join this cluster ('auto' or HOST:PORT) instead of "
                                                     "starting a local Ray instance")
    cpus_per_run: Optional[int] = Field(None, ge=1, description="CPU cores (and torch threads) per run; ray "
                                                                "default 1, sequential default: torch's own")
    gpus_per_run: float = Field(0, ge=0, description="ray: GPUs per run, fractional to share one (e.g. 0.25)")
    max_retries: int = Field(1, ge=0, description="ray: retries of a run whose worker process died")
    resume_every_s: float = Field(60, ge=0, description="seconds between a fine-tuning run's resume states, written "
                                                       "at an epoch's start (0: every epoch)")

    @model_validator(mode="after")
    def _no_ddp_in_tasks(self):
        if self.executor == "ray" and self.ddp:  # Lightning's DDP re-runs the command per GPU; a Ray task has none
            raise ValueError("ddp runs one process per device by re-running the command, which a Ray task cannot: "
                             "use executor 'sequential' for DDP runs, or give each Ray run whole GPUs with "
                             "gpus_per_run: 1 and ddp: false")
        return self


class NormalisationFields(Strict):
    """Per-channel input statistics of [0, 1] images: one mean and one std per input channel of the weights."""

    mean: list[float] = Field(min_length=1)
    std: list[float] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self):
        if len(self.mean) != len(self.std) or not all(s > 0 for s in self.std):
            raise ValueError(f"mean {self.mean} and std {self.std} need one entry per channel and every std > 0")
        return self


class _WeightFields(Strict):
    """Pre-trained weights by name: a zoo model (cached by `medtransfer zoo fetch/import`), a timm model whose
    weights are in the local cache, or a file (medtransfer checkpoint, or a foreign one whose layout is detected).

    ``normalisation`` states the input statistics the weights were trained with where nothing records them (a
    foreign ``.pth`` such as a MoCo release: ``imagenet``); zoo entries, timm's ``pretrained_cfg`` and medtransfer
    checkpoints carry their own, which it overrides."""

    checkpoint: Optional[FilePath] = None
    zoo: Optional[str] = None
    timm: Optional[str] = None
    normalisation: Optional[Union[Literal["imagenet", "unit_range", "half"], NormalisationFields]] = None

    @model_validator(mode="after")
    def _normalisation_needs_weights(self):
        if self.normalisation is not None and self.checkpoint is None and self.zoo is None and self.timm is None:
            raise ValueError("normalisation: describes pre-trained weights; give it with checkpoint, zoo or timm "
                             "(a random init and a pre-training decide their own)")
        return self

    @field_validator("zoo")
    @classmethod
    def _known_zoo(cls, name: Optional[str]) -> Optional[str]:
        from medtransfer.models.zoo import ZOO
        return name if name is None else _registered(name, ZOO, "zoo model")


class WeightsSource(_WeightFields):
    """Exactly one source of pre-trained weights (a pre-training's ``init``)."""

    @model_validator(mode="after")
    def _exactly_one(self):
        given = [k for k in ("zoo", "timm", "checkpoint") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of zoo, timm, checkpoint (got {given or 'none'})")
        return self


def _weights_source(value: Any) -> str:
    return "source" if isinstance(value, (dict, BaseModel)) else "file"


WeightsInit = Annotated[Union[Annotated[FilePath, Tag("file")], Annotated[WeightsSource, Tag("source")]],
                        Discriminator(_weights_source)]


class PretrainConfig(Strict):
    """Self-supervised pre-training of a backbone on a dataset's images; labels are never read (except by the
    ``supervised`` method, which is continual pre-training with labels)."""

    method: str = "simclr"
    data: DatasetConfig
    backbone: BackboneConfig = BackboneConfig()
    init: Optional[WeightsInit] = Field(None, description="continue from these weights (a file, {zoo: NAME}, "
                                                          "{timm: NAME} or {checkpoint: FILE})")
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(256, ge=2)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_epochs: int = Field(0, ge=0)
    method_options: dict[str, Any] = {}
    views: dict[str, Any] = {}
    online_probe: bool = Field(False, description="linear probe on detached features, validated every epoch")
    seed: Seed = 0
    hardware: HardwareConfig = HardwareConfig()
    output: Optional[FilePath] = None

    @field_validator("method")
    @classmethod
    def _known(cls, name: str) -> str:
        from medtransfer.pretrain import METHODS
        return _registered(name, METHODS, "method")


def _pretrain_source(value: Any) -> str:
    """A mapping is an inline pre-training, anything else a file; routing by input keeps an error inside an inline
    config from also being reported as "not a valid path" under pydantic's internal union-member names."""
    return "inline" if isinstance(value, (dict, BaseModel)) else "file"


PretrainSource = Annotated[Union[Annotated[FilePath, Tag("file")], Annotated[PretrainConfig, Tag("inline")]],
                           Discriminator(_pretrain_source)]


class FusionMember(Strict):
    """One backbone of a fusion: another init of the experiment by its ``label`` (name), or an inline ``init``
    (checkpoint, zoo, timm, random or a pre-training), trained under its own ``strategy`` (default: the run's)."""

    label: Optional[str] = None
    init: Optional["InitConfig"] = None
    strategy: Optional[Any] = None

    @field_validator("strategy")
    @classmethod
    def _strategy(cls, spec: Any):
        from medtransfer.finetune.fusion import member_strategy
        return None if spec is None else member_strategy(spec)

    @model_validator(mode="after")
    def _one_source(self):
        if (self.label is None) == (self.init is None):
            raise ValueError("a fusion member is {label: INIT} (an init of this experiment) or {init: {...}}, "
                             "exactly one of them")
        if self.init is not None and self.init.fuse:
            raise ValueError("a fusion member cannot be a fusion itself")
        return self


class InitConfig(_WeightFields):
    """Where fine-tuning starts: random (no source), a checkpoint file, a zoo model, a timm model's cached weights,
    a medtransfer pre-training, or a fusion of several of them (``fuse``, ``finetune/fusion.py``)."""

    label: Optional[str] = None
    pretrain: Optional[PretrainSource] = None
    fuse: Optional[list[FusionMember]] = Field(None, min_length=2, description="members of a fusion")
    how: Optional[Literal["concat", "ensemble"]] = Field(
        None, description="fusion: concat (pooled features concatenated, one head; default) or ensemble")
    dropout: Optional[float] = Field(None, ge=0, lt=1, description="fusion: dropout before the head(s); "
                                                                    "default train.dropout")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any):
        if data == "random":
            return {"label": "random"}
        if isinstance(data, str):
            raise ValueError(f"{data!r} is not an init; allowed: 'random', {{checkpoint: FILE}}, {{zoo: NAME}}, "
                             "{timm: MODEL}, {pretrain: PRETRAIN.yaml or an inline pre-training config}")
        return data

    @model_validator(mode="after")
    def _one_source(self):
        given = [k for k in ("checkpoint", "zoo", "timm", "pretrain", "fuse") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of checkpoint, zoo, timm, pretrain or fuse, not {' and '.join(given)}")
        fusion_keys = [k for k in ("how", "dropout") if getattr(self, k) is not None]
        if fusion_keys and self.fuse is None:
            raise ValueError(f"{', '.join(fusion_keys)}: settings of a fusion; give them with fuse")
        return self

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        if self.checkpoint is not None:
            return self.checkpoint.stem
        if self.zoo or self.timm:
            return self.zoo or self.timm
        if self.pretrain is not None:
            return self.pretrain.stem if isinstance(self.pretrain, Path) else self.pretrain.method
        if self.fuse:
            return "+".join(m.label or m.init.name for m in self.fuse)
        return "random"


FusionMember.model_rebuild()


class ExperimentConfig(Strict):
    """A grid: inits x datasets x strategies x policies x label fractions x imbalance ratios x seeds, all sharing one
    backbone and schedule."""

    name: str
    output: Optional[FilePath] = None
    datasets: list[DatasetConfig] = Field(min_length=1)
    backbone: BackboneConfig = BackboneConfig()
    inits: list[InitConfig] = Field(default_factory=lambda: [InitConfig(label="random")], min_length=1)
    strategies: list[Any] = Field(default_factory=lambda: ["end_to_end"], min_length=1, validate_default=True)
    label_fractions: list[float] = Field(default_factory=lambda: [1.0], min_length=1)
    seeds: list[Seed] = Field(default_factory=lambda: [0], min_length=1)
    train: TrainConfig = TrainConfig()
    hardware: HardwareConfig = HardwareConfig()
    policies: list[Any] = Field(default_factory=lambda: ["none"], min_length=1, validate_default=True,
                                description="training policies, one grid entry each (finetune/policies)")
    imbalance: ImbalanceConfig = ImbalanceConfig()  # data.imbalance: training ratios majority : rare class

    @field_validator("policies")
    @classmethod
    def _policies(cls, specs: list) -> list:
        from medtransfer.finetune.policies import parse_policies
        return parse_policies(specs)

    @field_validator("strategies")
    @classmethod
    def _strategies(cls, specs: list) -> list:
        from medtransfer.finetune.strategies import parse_strategy
        parsed = [parse_strategy(s, key=f"strategies[{i}]") for i, s in enumerate(specs)]
        labels = [s.label() for s in parsed]
        if len(set(labels)) != len(labels):
            raise ValueError(f"duplicate strategies: {labels}")
        return parsed

    @model_validator(mode="after")
    def _strategies_fit_schedule(self):
        problems = [f"strategies[{i}] ({s.label()}): {problem}" for i, s in enumerate(self.strategies)
                    if (problem := s.schedule_problem(self.train.epochs))]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @field_validator("label_fractions")
    @classmethod
    def _fractions(cls, fractions: list[float]) -> list[float]:
        bad = [f for f in fractions if not 0 < f <= 1]
        if bad:
            raise ValueError(f"{bad} outside (0, 1]; a label fraction is a share of the training labels, e.g. 0.01")
        return sorted(set(fractions))

    @field_validator("datasets")
    @classmethod
    def _unique_datasets(cls, datasets: list[DatasetConfig]) -> list[DatasetConfig]:
        dumps = [d.model_dump(mode="json") for d in datasets]
        repeated = [d["name"] for i, d in enumerate(dumps) if d in dumps[:i]]
        if repeated:  # the same runs twice under one label: the second would try to overwrite the first's results
            raise ValueError(f"duplicate datasets: {repeated} listed twice with the same options")
        return datasets

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"duplicate seeds: {seeds}; each seed is one repetition of every run")
        return seeds

    @field_validator("inits")
    @classmethod
    def _unique_inits(cls, inits: list[InitConfig]) -> list[InitConfig]:
        names = [i.name for i in inits]
        if len(set(names)) != len(names):
            raise ValueError(f"inits need distinct labels, got {names}; add 'label:' to tell them apart")
        return inits
