"""The zoo: published pre-trained models by name, imported once into medtransfer's checkpoint format and cached.

Adding a model is one ``ZooEntry`` in ``ZOO``. ``fetch`` downloads (where there is internet), ``import_file`` takes a
file the user already has; both verify the published checksum when one exists (else they record the observed
sha256 and say so), convert the file's layout (``convert.py``), load it *exactly* into the entry's backbone (only
heads may be left over) and only then write the cache, atomically: a bad file never touches a cached entry.
URLs and checksums are the publishers' (most via the BenchmarkTransferLearning list, Hosseinzadeh Taher et al.).
Each entry also carries the input normalisation its publishers trained with, which fine-tuning then applies.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch

from medtransfer.cache import cache_root as shared_cache_root
from medtransfer.data.normalisation import DEFAULT, IMAGENET, UNIT_RANGE, Normalisation
from medtransfer.errors import CheckpointError, ConfigError, allowed
from medtransfer.models.backbones import Backbone
from medtransfer.models.checkpoint import (FORMAT, file_normalisation, load_backbone_weights, read_metadata,
                                           read_weights, save_backbone)
from medtransfer.models.convert import convert, detect_layout
from medtransfer.models.factory import create_backbone
from medtransfer.models.readers import flatten_source, read_source

CHECKPOINT = "backbone.safetensors"
_FB, _DROPBOX = "https://dl.fbaipublicfiles.com", "https://www.dropbox.com/sh/87d24jqsl6ra7t2"


@dataclass(frozen=True)
class ZooEntry:
    architecture: str  # a medtransfer backbone name
    data: str
    method: str
    url: str  # the file itself when ``direct``, else the page/folder it is published on
    layout: str  # a converter in convert.LAYOUTS
    licence: str
    paper: str
    checksum: str | None = None  # "sha256:<hex>" or "md5:<hex>", possibly the prefix a publisher prints; None: none
    direct: bool = True  # False: download by hand (form, folder, TF export) and use ``zoo import``
    note: str = ""
    in_chans: int = 3
    input_size: tuple[int, ...] = (224, 224)
    normalisation: Normalisation = IMAGENET  # of [0, 1] inputs, as the publishers' training code applied it


def _ssl(method: str, url: str, layout: str, licence: str, paper: str, **kw) -> ZooEntry:
    return ZooEntry("resnet50", "ImageNet-1k (no labels)", method, url, layout, licence, paper, **kw)


# Normalisation: torchvision, the PyTorch SSL codes (MoCo, PCL, PyContrast, SwAV, Barlow Twins), iNat2021/NeWT and
# BYOL's Haiku code normalise with ImageNet's mean/std; SimCLR's TF code feeds [0, 1] images as they are; Models
# Genesis and Swin UNETR's SSL code feed HU windowed [-1000, 1000] -> [0, 1] as it is; MedicalNet z-scores each
# volume over its non-zero voxels, which no fixed mean/std expresses, so its entries keep medtransfer's 0.5 / 0.5.
_SIMCLR_NOTE = ("TF checkpoint: export its variables to .npz (README, 'SimCLR from TensorFlow') and "
                "`zoo import NAME FILE.npz`")
_MEDICALNET = "https://huggingface.co/TencentMedicalNet/MedicalNet-Resnet{d}/resolve/main/resnet_{d}_23dataset.pth"

ZOO: dict[str, ZooEntry] = {
    "imagenet_supervised": ZooEntry(
        "resnet50", "ImageNet-1k", "supervised", "https://download.pytorch.org/models/resnet50-0676ba61.pth",
        "torchvision", "BSD-3-Clause (torchvision); ImageNet terms of access", "He et al. 2016",
        checksum="sha256:0676ba61"),
    "inat2021_supervised": ZooEntry(
        "resnet50", "iNat2021 (2.7 M images, 10k species)", "supervised (from ImageNet)",
        "https://cornell.box.com/s/bnyhq5lwobu6fgjrub44zle0pyjijbmw", "torchvision", "MIT (visipedia/newt)",
        "Van Horn et al. 2021", direct=False, note="file inat2021_supervised_large.pth.tar in that folder"),
    "inat2021_mini_supervised": ZooEntry(
        "resnet50", "iNat2021 mini (500k images)", "supervised (from ImageNet)",
        "https://cornell.box.com/s/bnyhq5lwobu6fgjrub44zle0pyjijbmw", "torchvision", "MIT (visipedia/newt)",
        "Van Horn et al. 2021", direct=False, note="file inat2021_supervised_mini.pth.tar in that folder"),
    "insdis": _ssl("InsDis", f"{_DROPBOX}/AACcsSIt1_Njv7GsmsuzZ6Sta/InsDis.pth?dl=1", "pycontrast",
                   "BSD-2-Clause (PyContrast)", "Wu et al. 2018"),
    "moco_v1": _ssl("MoCo v1", f"{_FB}/moco/moco_checkpoints/moco_v1_200ep/moco_v1_200ep_pretrain.pth.tar", "moco",
                    "CC-BY-NC 4.0 (facebookresearch/moco)", "He et al. 2020", checksum="md5:b251726a"),
    "pcl_v1": _ssl("PCL v1", "https://storage.googleapis.com/sfr-pcl-data-research/PCL_checkpoint/"
                   "PCL_v1_epoch200.pth.tar", "moco", "MIT (salesforce/PCL)", "Li et al. 2021"),
    "pirl": _ssl("PIRL", f"{_DROPBOX}/AADN4jKnvTI0U5oT6hTmQZz8a/PIRL.pth?dl=1", "pycontrast",
                 "BSD-2-Clause (PyContrast)", "Misra & van der Maaten 2020"),
    "pcl_v2": _ssl("PCL v2", "https://storage.googleapis.com/sfr-pcl-data-research/PCL_checkpoint/"
                   "PCL_v2_epoch200.pth.tar", "moco", "MIT (salesforce/PCL)", "Li et al. 2021"),
    "simclr_v1": _ssl("SimCLR v1", "https://storage.cloud.google.com/simclr-gcs/checkpoints/ResNet50_1x.zip",
                      "simclr_tf", "Apache-2.0 (google-research/simclr)", "Chen et al. 2020a", direct=False,
                      note=_SIMCLR_NOTE, normalisation=UNIT_RANGE),
    "moco_v2": _ssl("MoCo v2", f"{_FB}/moco/moco_checkpoints/moco_v2_800ep/moco_v2_800ep_pretrain.pth.tar", "moco",
                    "CC-BY-NC 4.0 (facebookresearch/moco)", "Chen et al. 2020c", checksum="md5:a04e12f8"),
    "simclr_v2": _ssl("SimCLR v2", "https://storage.googleapis.com/simclr-checkpoints/simclrv2/pretrained/r50_1x_sk0/",
                      "simclr_tf", "Apache-2.0 (google-research/simclr)", "Chen et al. 2020b", direct=False,
                      note=_SIMCLR_NOTE, normalisation=UNIT_RANGE),
    "sela_v2": _ssl("SeLa v2", f"{_FB}/deepcluster/selav2_400ep_pretrain.pth.tar", "swav",
                    "CC-BY-NC 4.0 (facebookresearch/swav)", "Caron et al. 2020"),
    "infomin": _ssl("InfoMin", f"{_DROPBOX}/AAAzMTynP3Qc8mIE4XWkgILUa/InfoMin_800.pth?dl=1", "pycontrast",
                    "BSD-2-Clause (PyContrast)", "Tian et al. 2020"),
    "byol": _ssl("BYOL", "https://storage.googleapis.com/deepmind-byol/checkpoints/pretrain_res50x1.pkl",
                 "byol_haiku", "Apache-2.0 (deepmind-research)", "Grill et al. 2020", direct=False,
                 note="the .pkl pickles BYOL's own classes: export online params + state to .npz (README) and "
                      "`zoo import byol FILE.npz`"),
    "deepcluster_v2": _ssl("DeepCluster v2", f"{_FB}/deepcluster/deepclusterv2_800ep_pretrain.pth.tar", "swav",
                           "CC-BY-NC 4.0 (facebookresearch/swav)", "Caron et al. 2020"),
    "swav": _ssl("SwAV", f"{_FB}/deepcluster/swav_800ep_pretrain.pth.tar", "swav",
                 "CC-BY-NC 4.0 (facebookresearch/swav)", "Caron et al. 2020"),
    "barlow_twins": _ssl("Barlow Twins", f"{_FB}/barlowtwins/ep1000_bs2048_lrw0.2_lrb0.0048_lambd0.0051/resnet50.pth",
                         "torchvision", "MIT (facebookresearch/barlowtwins)", "Zbontar et al. 2021"),
    "models_genesis_chest_ct": ZooEntry(
        "genesis_unet_encoder_3d", "LUNA16 chest CT (no labels)", "Models Genesis",
        "https://github.com/MrGiovanni/ModelsGenesis/tree/master/pytorch", "models_genesis", "MIT (ModelsGenesis)",
        "Zhou et al. 2019", direct=False, note="Genesis_Chest_CT.pt, sent after the request form on that page",
        in_chans=1, input_size=(64, 64, 32), normalisation=UNIT_RANGE),
    "swin_unetr_ssl": ZooEntry(
        "swin_unetr", "5 public CT datasets, 5,050 volumes (no labels)",
        "Swin UNETR SSL (inpainting, rotation, contrastive)",
        "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/model_swinvit.pt",
        "swin_unetr", "Apache-2.0 (Project-MONAI/research-contributions)", "Tang et al. 2022",
        note="no published checksum: the import records the file's sha256", in_chans=1, input_size=(96, 96, 96),
        normalisation=UNIT_RANGE),
    **{f"medicalnet_resnet{d}": ZooEntry(
        f"medicalnet_resnet{d}_3d", "23 medical 3D segmentation datasets", "supervised segmentation",
        _MEDICALNET.format(d=d), "medicalnet", "MIT (Tencent/MedicalNet)", "Chen et al. 2019",
        in_chans=1, input_size=(64, 64, 64), normalisation=DEFAULT) for d in (10, 18, 50)},
}


def zoo_entry(name: str) -> ZooEntry:
    if name not in ZOO:
        raise ConfigError(f"unknown zoo model {name!r}; allowed: {allowed(ZOO)} (see `medtransfer zoo list`)")
    return ZOO[name]


def cache_root() -> Path:
    """Zoo weights live in ``zoo/`` under the shared cache root (`medtransfer.cache`)."""
    return shared_cache_root() / "zoo"


def cached_file(name: str) -> Path | None:
    path = cache_root() / name / CHECKPOINT
    return path if path.is_file() else None


def verify_checksum(path: Path, checksum: str | None, source: str) -> str:
    """sha256 of ``path``; raises when it (or its md5) does not start with the published digest."""
    digests = {"sha256": hashlib.sha256(), "md5": hashlib.md5()}
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            for digest in digests.values():
                digest.update(block)
    if checksum is not None:
        algorithm, _, expected = checksum.partition(":")
        observed = digests[algorithm].hexdigest()
        if not observed.startswith(expected.lower()):
            raise CheckpointError(f"{source}: {algorithm} {observed} does not match the published {expected}; "
                                  "the file is corrupt, truncated or another file; nothing was cached")
    return digests["sha256"].hexdigest()


def load_foreign(backbone: Backbone, path: Path, layout: str | None = None, source: str | None = None,
                 normalisation: Normalisation | None = None) -> dict:
    """Read any supported file safely, convert its layout (auto-detected unless given) and load it exactly into
    ``backbone`` (a grey first conv adapted for ``normalisation``). Returns the import report: layout, wrapper,
    loaded tensors, dropped groups, ignored, adapted."""
    source = source or str(path)
    flat, read = flatten_source(read_source(path), source)
    layout = layout or detect_layout(flat)
    try:
        converted = convert(flat, backbone.model.state_dict(), layout)
    except CheckpointError as err:
        raise CheckpointError(f"{source}: {err}") from None
    report = load_backbone_weights(backbone, converted.state, source, normalisation)
    return {"layout": layout, **read, "loaded": len(converted.state) - len(report["ignored"]),
            "dropped": {group: len(keys) for group, keys in sorted(converted.dropped.items())}, **report}


def load_init(backbone: Backbone, path: Path, source: str | None = None,
              normalisation: Normalisation | None = None) -> dict:
    """Load an init file: medtransfer's own format as it is (sha256 checked), anything else through ``load_foreign``.
    ``normalisation`` is the init's (``init_normalisation``); by default the one recorded beside the file."""
    normalisation = file_normalisation(path) if normalisation is None else normalisation
    if read_metadata(path).get("format") == FORMAT:
        report = load_backbone_weights(backbone, read_weights(path), source or str(path), normalisation)
        return {"layout": FORMAT, **report}
    return load_foreign(backbone, path, source=source, normalisation=normalisation)


def describe_report(report: dict) -> str:
    parts = [f"layout {report['layout']}", f"loaded {report.get('loaded', '?')} tensors"]
    if report.get("wrapper"):
        parts.append(f"from '{report['wrapper']}'" + (f" (not read: {', '.join(report['not_read'])})"
                                                       if report.get("not_read") else ""))
    if report.get("dropped"):
        parts.append("dropped " + ", ".join(f"{group} ({n})" for group, n in report["dropped"].items()))
    if report.get("ignored"):
        parts.append(f"ignored head {', '.join(report['ignored'])}")
    parts += [f"adapted {a}" for a in report.get("adapted", [])]
    return "; ".join(parts)


def import_file(name: str, file: str | Path) -> tuple[Path, dict]:
    """Verify, convert and cache ``file`` as zoo model ``name``; the cache changes only if everything succeeded."""
    entry, file = zoo_entry(name), Path(file)
    if not file.is_file():
        raise CheckpointError(f"zoo import {name}: {file} does not exist")
    observed = verify_checksum(file, entry.checksum, f"zoo import {name} ({file.name})")
    backbone = create_backbone(entry.architecture, entry.in_chans, entry.input_size)
    report = load_foreign(backbone, file, entry.layout, source=f"zoo import {name} ({file.name})")
    final = cache_root() / name
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=final.parent))
    try:
        save_backbone(backbone, staging / CHECKPOINT, zoo=name, method=entry.method, dataset=entry.data,
                      source_url=entry.url, source_file=file.name, source_sha256=observed,
                      published_checksum=entry.checksum, checksum_verified=entry.checksum is not None,
                      layout=entry.layout, licence=entry.licence, paper=entry.paper, import_report=report,
                      normalisation=entry.normalisation.to_dict(),
                      lineage=[f"{name} (zoo)"], init_chain=[])
        old = final.with_name(f".{name}.old")
        if final.exists():
            os.replace(final, old)
        os.replace(staging, final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final / CHECKPOINT, {**report, "sha256": observed, "checksum_verified": entry.checksum is not None}


def fetch(name: str, timeout: float = 60.0) -> tuple[Path, dict]:
    """Download ``name`` (streamed to a .part file beside the cache), then ``import_file`` it; the download is
    deleted afterwards either way, since the cache keeps the converted weights."""
    entry = zoo_entry(name)
    if not entry.direct:
        raise ConfigError(f"zoo fetch {name}: not a direct download ({entry.note}); download it from {entry.url} "
                          f"and run `medtransfer zoo import {name} FILE`")
    downloads = cache_root() / ".downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    target = downloads / Path(urllib.request.url2pathname(entry.url.split("?")[0])).name
    part = target.with_name(target.name + ".part")
    try:
        try:
            with urllib.request.urlopen(entry.url, timeout=timeout) as response, open(part, "wb") as out:
                shutil.copyfileobj(response, out, 1 << 20)
        except OSError as err:  # urllib's URLError and socket timeouts are OSErrors
            raise CheckpointError(f"zoo fetch {name}: download from {entry.url} failed ({err}); without internet, "
                                  f"download elsewhere and run `medtransfer zoo import {name} FILE`") from err
        os.replace(part, target)
        return import_file(name, target)
    finally:
        part.unlink(missing_ok=True)
        target.unlink(missing_ok=True)


def zoo_rows() -> list[dict]:
    return [{"name": name, "arch": e.architecture, "data": e.data, "method": e.method, "url": e.url,
             "checksum": e.checksum or "-", "licence": e.licence, "norm": e.normalisation.label,
             "cached": "yes" if cached_file(name) else "no"}
            for name, e in ZOO.items()]


def timm_cached_file(model_name: str) -> Path:
    """The locally cached weights file of a timm model name, found without any network access."""
    import huggingface_hub
    import timm
    from timm.models import get_pretrained_cfg

    if not timm.is_model(model_name) or get_pretrained_cfg(model_name) is None:
        raise ConfigError(f"timm: {model_name!r} is not a timm model with pretrained weights (timm.list_pretrained())")
    cfg = get_pretrained_cfg(model_name)
    if cfg.hf_hub_id:
        for filename in ("model.safetensors", "pytorch_model.bin"):
            found = huggingface_hub.try_to_load_from_cache(cfg.hf_hub_id, cfg.hf_hub_filename or filename)
            if isinstance(found, str):
                return Path(found)
    if cfg.url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(cfg.url).name
        if path.is_file():
            return path
    raise ConfigError(f"timm: weights of {model_name!r} are not in the local cache (Hugging Face hub "
                      f"{cfg.hf_hub_id or '-'}, torch hub {cfg.url or '-'}); download them once with "
                      f"timm.create_model({model_name!r}, pretrained=True) on a machine with internet")


def resolve_weights(zoo: str | None = None, timm: str | None = None, checkpoint: Path | None = None,
                    key: str = "init") -> tuple[Path, str]:
    """(file, lineage label) of an init given as a zoo name, a timm model name or a file."""
    if zoo is not None:
        zoo_entry(zoo)
        path = cached_file(zoo)
        if path is None:
            raise ConfigError(f"{key}: zoo model {zoo!r} is not in the cache {cache_root()}; run "
                              f"`medtransfer zoo fetch {zoo}` or `medtransfer zoo import {zoo} FILE`")
        return path, f"{zoo} (zoo)"
    if timm is not None:
        return timm_cached_file(timm), f"{timm} (timm)"
    if checkpoint is None:
        raise ConfigError(f"{key}: give one of zoo, timm or checkpoint")
    if not Path(checkpoint).is_file():
        raise CheckpointError(f"{key}: checkpoint {checkpoint} does not exist")
    return Path(checkpoint), Path(checkpoint).name


def init_normalisation(zoo: str | None = None, timm: str | None = None,
                       checkpoint: Path | None = None, setting=None) -> Normalisation:
    """The input normalisation the weights of an init were trained with, per channel of the weights: the user's
    ``setting`` (the init's ``normalisation:``) when given, else the zoo entry's, timm's ``pretrained_cfg``
    mean/std, or the one recorded beside a checkpoint (0.5 / 0.5 if none)."""
    if setting is not None:
        from medtransfer.data.normalisation import from_setting

        return from_setting(setting)
    if zoo is not None:
        return zoo_entry(zoo).normalisation
    if timm is not None:
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(timm)
        return Normalisation(tuple(cfg.mean), tuple(cfg.std)) if cfg and cfg.mean and cfg.std else DEFAULT
    return file_normalisation(checkpoint) if checkpoint is not None else DEFAULT
