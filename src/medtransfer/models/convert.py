"""Converters from the layouts published checkpoints come in to a backbone's native (timm/MONAI) state dict.

One converter per layout, in a plain registry. Each takes the flat ``name -> tensor`` dict read from the file and the
target backbone's state dict, and returns the backbone's tensors plus every key it dropped *by group* (projection
head, momentum encoder, queue, prototypes, decoder, optimizer slots ...), so an import reports exactly what was
left out. A key a converter cannot place is an error listing it: nothing is dropped silently.
Key prefixes per method: ``../shared/REFERENCE.md``, "Checkpoint formats of published SSL ResNet-50s".
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

import torch

from medtransfer.errors import CheckpointError, allowed
from medtransfer.models.checkpoint import WRAPPER_PREFIXES


@dataclass
class Converted:
    state: dict[str, torch.Tensor]
    dropped: dict[str, list[str]] = field(default_factory=dict)  # group -> source keys left out on purpose


@dataclass(frozen=True)
class Layout:
    convert: Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor]], Converted]
    description: str


def _listing(keys: list[str]) -> str:
    return f"{len(keys)}: {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"


def _cannot_place(layout: str, keys: list[str]) -> CheckpointError:
    return CheckpointError(f"layout {layout!r}: cannot place {_listing(sorted(keys))}; this is not a {layout} "
                           f"checkpoint, or it holds more than the layout knows (pick another layout: "
                           f"{allowed(LAYOUTS)})")


def _strip_shared(state: dict, prefixes=WRAPPER_PREFIXES) -> dict:
    """Remove wrapper prefixes that *every* key shares (DataParallel's ``module.``, Lightning's ``backbone.``)."""
    for prefix in prefixes:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _prefixed(layout: str, keep: str, drop: tuple[tuple[str, str], ...] = (),
              inner_drop: tuple[tuple[str, str], ...] = (), rest: str | None = None):
    """Keep the keys under ``keep`` (prefix removed); ``drop`` names groups of other keys by prefix, ``inner_drop``
    groups under ``keep`` (e.g. MoCo's projection ``fc``); ``rest`` groups every other key instead of failing."""
    def convert(source: dict, target: dict) -> Converted:
        out, dropped, unplaced = {}, defaultdict(list), []
        for key, value in source.items():
            if key.startswith(keep):
                inner = key[len(keep):]
                group = next((g for g, p in inner_drop if inner.startswith(p)), None)
                if group:
                    dropped[group].append(key)
                else:
                    out[inner] = value
            elif group := next((g for g, p in drop if key.startswith(p)), None):
                dropped[group].append(key)
            elif rest is not None:
                dropped[f"{rest} ({key.split('.')[0]})"].append(key)
            else:
                unplaced.append(key)
        if unplaced:
            raise _cannot_place(layout, unplaced)
        if not out:
            raise CheckpointError(f"layout {layout!r}: no key starts with {keep!r}; not a {layout} checkpoint")
        return Converted(out, dict(dropped))
    return convert


def _plain(source: dict, target: dict) -> Converted:
    return Converted(_strip_shared(source))


def _add_bn_counters(state: dict, target: dict) -> None:
    """JAX/TF BatchNorms keep no step counter; PyTorch's buffer is only used with momentum=None, so 0 is exact."""
    for key in target:
        if key.endswith(".num_batches_tracked") and key.replace("num_batches_tracked", "running_mean") in state:
            state[key] = torch.zeros((), dtype=torch.long)


def _conv_from_hwio(w: torch.Tensor) -> torch.Tensor:
    return w.permute(3, 2, 0, 1).contiguous()  # TF/JAX (kh, kw, in, out) -> PyTorch (out, in, kh, kw)


_HAIKU_MODULE = re.compile(r"^(initial_conv|initial_batchnorm|block_group_(\d+)/~/block_(\d+)/~/"
                           r"(conv_(\d)|batchnorm_(\d)|shortcut_conv|shortcut_batchnorm))/(.+)$")
_HAIKU_BN = {"scale": "weight", "offset": "bias", "~/mean_ema/average": "running_mean",
             "~/var_ema/average": "running_var"}


def _torch_module(match: re.Match) -> str:
    if match.group(1) in ("initial_conv", "initial_batchnorm"):
        return "conv1" if match.group(1) == "initial_conv" else "bn1"
    block = f"layer{int(match.group(2)) + 1}.{match.group(3)}"
    part = match.group(4)
    if part.startswith("shortcut"):
        return f"{block}.downsample.{0 if part == 'shortcut_conv' else 1}"
    return f"{block}.conv{int(match.group(5)) + 1}" if match.group(5) else f"{block}.bn{int(match.group(6)) + 1}"


def _byol_haiku(source: dict, target: dict) -> Converted:
    """BYOL's JAX/Haiku ResNet-50 tree (params + BatchNorm state, '<network>/~/block_group_0/~/block_0/~/conv_0/w')
    to torchvision names; kernels HWIO -> OIHW. Haiku pads stride-2 convs 'SAME' (asymmetric), PyTorch
    symmetrically: the usual, small numerical difference of every converted BYOL model."""
    roots = {k.split("/~/")[0] for k in source if "/~/initial_conv/" in k}
    if len(roots) != 1:
        raise CheckpointError(f"layout 'byol_haiku': expected one ResNet tree with an initial_conv, found "
                              f"{sorted(roots) or 'none'}")
    root = roots.pop() + "/~/"
    out, dropped, unplaced = {}, defaultdict(list), []
    for key, value in source.items():
        if not key.startswith(root):
            dropped[f"other networks ({key.split('/')[0]})"].append(key)
            continue
        inner = key[len(root):]
        match = _HAIKU_MODULE.match(inner)
        if inner.startswith("logits/"):
            dropped["classification head"].append(key)
        elif match is None:
            unplaced.append(key)
        elif match.group(7) == "w":
            out[f"{_torch_module(match)}.weight"] = _conv_from_hwio(value)
        elif match.group(7) in _HAIKU_BN:
            out[f"{_torch_module(match)}.{_HAIKU_BN[match.group(7)]}"] = value.reshape(-1).contiguous()
        elif match.group(7).endswith(("/hidden", "/counter")):
            dropped["EMA bookkeeping (hidden, counter)"].append(key)
        else:
            unplaced.append(key)
    if unplaced:
        raise _cannot_place("byol_haiku", unplaced)
    _add_bn_counters(out, target)
    return Converted(out, dict(dropped))


_TF_VAR = re.compile(r"^base_model/(conv2d|batch_normalization)(?:_(\d+))?/(kernel|gamma|beta|moving_mean|"
                     r"moving_variance)$")
_TF_BN = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}


def _creation_order(target: dict) -> tuple[list[str], list[str]]:
    """Convolutions and BatchNorms of a torchvision-named ResNet in the order SimCLR's TF code creates them:
    stem, then per block the projection shortcut first, then the block's own convolutions."""
    convs, norms = ["conv1"], ["bn1"]
    blocks = list(dict.fromkeys(".".join(k.split(".")[:2]) for k in target if k.startswith("layer")))
    for block in blocks:
        if f"{block}.downsample.0.weight" in target:
            convs.append(f"{block}.downsample.0")
            norms.append(f"{block}.downsample.1")
        n = sum(1 for k in target if re.fullmatch(rf"{re.escape(block)}\.conv\d\.weight", k))
        convs += [f"{block}.conv{i}" for i in range(1, n + 1)]
        norms += [f"{block}.bn{i}" for i in range(1, n + 1)]
    return convs, norms


def _simclr_tf(source: dict, target: dict) -> Converted:
    """SimCLR v1/v2 TF variables ('base_model/conv2d_12/kernel', 'base_model/batch_normalization_12/gamma'), numbered
    in creation order, mapped onto the backbone in that same order (see ``_creation_order``)."""
    convs, norms, dropped, unplaced = {}, defaultdict(dict), defaultdict(list), []
    for key, value in source.items():
        match = _TF_VAR.match(key)
        if match:
            index = int(match.group(2) or 0)
            if match.group(1) == "conv2d":
                convs[index] = value
            else:
                norms[index][match.group(3)] = value
        elif key.endswith("/Momentum") or key == "global_step":
            dropped["optimizer state"].append(key)
        elif key.startswith(("head_supervised/", "head_contrastive/")):
            dropped[key.split("/")[0]].append(key)
        elif key.startswith("ema_model/"):
            dropped["EMA copy (ema_model)"].append(key)
        else:
            unplaced.append(key)
    if unplaced:
        raise _cannot_place("simclr_tf", unplaced)
    conv_names, norm_names = _creation_order(target)
    if (len(convs), len(norms)) != (len(conv_names), len(norm_names)):
        raise CheckpointError(f"layout 'simclr_tf': the checkpoint has {len(convs)} convolutions and {len(norms)} "
                              f"BatchNorms, the backbone {len(conv_names)} and {len(norm_names)}: another "
                              "architecture")
    out = {f"{name}.weight": _conv_from_hwio(convs[i]) for name, i in zip(conv_names, sorted(convs))}
    for name, i in zip(norm_names, sorted(norms)):
        out.update({f"{name}.{_TF_BN[p]}": v for p, v in norms[i].items()})
    _add_bn_counters(out, target)
    return Converted(out, dict(dropped))


def _medicalnet(source: dict, target: dict) -> Converted:
    """MedicalNet's 3D ResNets use MONAI's parameter names under DataParallel's 'module.'; its segmentation head
    (conv_seg) is not part of the encoder."""
    keep_all = _prefixed("medicalnet", "", inner_drop=(("segmentation head", "conv_seg."),))
    return keep_all(_strip_shared(source, ("module.",)), target)


_GENESIS_STAGES = {"down_tr64": "conv_0", "down_tr128": "down_1.convs", "down_tr256": "down_2.convs",
                   "down_tr512": "down_3.convs"}
_GENESIS_KEY = re.compile(r"^(down_tr\d+)\.ops\.(\d)\.(conv1|bn1)\.(.+)$")


def _models_genesis(source: dict, target: dict) -> Converted:
    """Models Genesis' UNet3D (down_tr64 ... down_tr512, each two conv+BN) onto ``genesis_unet_encoder_3d``,
    whose stages are built from MONAI ``Convolution`` blocks; the decoder and output layer are dropped."""
    out, dropped, unplaced = {}, defaultdict(list), []
    for key, value in _strip_shared(source, ("module.",)).items():
        match = _GENESIS_KEY.match(key)
        if match:
            stage, k, layer, param = match.groups()
            out[f"{_GENESIS_STAGES[stage]}.conv_{k}.{'conv' if layer == 'conv1' else 'adn.N'}.{param}"] = value
        elif key.startswith("up_tr"):
            dropped["decoder"].append(key)
        elif key.startswith("out_tr."):
            dropped["segmentation head"].append(key)
        else:
            unplaced.append(key)
    if unplaced:
        raise _cannot_place("models_genesis", unplaced)
    return Converted(out, dict(dropped))


_SWIN_ENCODER = re.compile(r"^(?:swinViT\.|swin_vit\.)?((?:patch_embed|layers[1-4]c?)\..+)$")
_SWIN_DROPPED = {"SSL heads (rotation, contrastive, reconstruction)": ("rotation_", "contrastive_", "conv."),
                 "Swin UNETR decoder": ("encoder1.", "encoder2.", "encoder3.", "encoder4.", "encoder10.", "decoder",
                                        "out.")}


def _swin_unetr(source: dict, target: dict) -> Converted:
    """Swin UNETR's encoder onto MONAI's SwinViT: as released (model_swinvit.pt: 'state_dict' -> 'module.' + SwinViT
    names, MLPs named fc1/fc2 as before MONAI renamed them linear1/linear2), as the SSL script saves it
    ('swin_vit.' beside its heads) or inside a fine-tuned SwinUNETR ('swinViT.' beside the decoder)."""
    out, dropped, unplaced = {}, defaultdict(list), []
    for key, value in _strip_shared(source, ("module.",)).items():
        match = _SWIN_ENCODER.match(key)
        group = next((g for g, prefixes in _SWIN_DROPPED.items() if key.startswith(prefixes)), None)
        if match:
            out[re.sub(r"\.mlp\.fc([12])\.", r".mlp.linear\1.", match.group(1))] = value
        elif group:
            dropped[group].append(key)
        else:
            unplaced.append(key)
    if unplaced:
        raise _cannot_place("swin_unetr", unplaced)
    # relative_position_index is a constant of the window size (whose bias table the file does carry): files saved
    # without this buffer get the backbone's own
    out.update({k: v for k, v in target.items() if k.endswith(".relative_position_index") and k not in out})
    return Converted(out, dict(dropped))


LAYOUTS: dict[str, Layout] = {
    "torchvision": Layout(_plain, "plain state dict in torchvision/timm/MONAI names (a prefix shared by every key "
                                  "- module., backbone., model. - is removed); supervised ImageNet, iNat2021, "
                                  "Barlow Twins, medtransfer and timm files"),
    "ddp": Layout(_prefixed("ddp", "module."), "DistributedDataParallel: every key under 'module.'"),
    "lightning": Layout(_prefixed("lightning", "backbone.", rest="method modules"),
                        "Lightning module: the backbone under 'backbone.' (in 'state_dict'); heads, momentum copies "
                        "and probes are dropped"),
    "pycontrast": Layout(_prefixed("pycontrast", "module.encoder.", drop=(("projection head", "module.head."),
                                                                          ("jigsaw head", "module.head_jig."))),
                         "PyContrast (InsDis, PIRL, InfoMin): 'model' -> 'module.encoder.'"),
    "moco": Layout(_prefixed("moco", "module.encoder_q.", drop=(("momentum encoder", "module.encoder_k."),
                                                                ("queue", "module.queue")),
                             inner_drop=(("projection head (encoder_q.fc)", "fc."),)),
                   "MoCo v1/v2, PCL v1/v2: 'state_dict' -> 'module.encoder_q.'; encoder_k and queue dropped"),
    "swav": Layout(_prefixed("swav", "module.", inner_drop=(("projection head", "projection_head."),
                                                            ("prototypes", "prototypes."))),
                   "SwAV, DeepCluster-v2, SeLa-v2: 'module.'; projection head and prototypes dropped"),
    "medicalnet": Layout(_medicalnet, "MedicalNet 3D ResNets: 'state_dict' -> 'module.'; conv_seg dropped"),
    "models_genesis": Layout(_models_genesis, "Models Genesis 3D U-Net: 'state_dict' -> 'module.down_tr*'; "
                                              "encoder kept, decoder dropped"),
    "swin_unetr": Layout(_swin_unetr, "Swin UNETR SwinViT: released SSL weights ('state_dict' -> 'module.'), the SSL "
                                      "script's 'swin_vit.' (heads dropped) or a SwinUNETR's 'swinViT.' (decoder "
                                      "dropped)"),
    "byol_haiku": Layout(_byol_haiku, "BYOL JAX/Haiku parameter + state tree (.npz, or .pkl of arrays)"),
    "simclr_tf": Layout(_simclr_tf, "SimCLR v1/v2 TensorFlow variables exported to .npz"),
}


def detect_layout(source: dict) -> str:
    """The layout of a foreign file given as an init, from its key names (the zoo names it explicitly)."""
    keys = list(source)
    if any("/~/" in k for k in keys):
        return "byol_haiku"
    if any(k.startswith("base_model/") for k in keys):
        return "simclr_tf"
    if any("down_tr64." in k for k in keys):
        return "models_genesis"
    if any(".layers1.0.blocks." in f".{k}" for k in keys):
        return "swin_unetr"
    if any(k.startswith("module.encoder_q.") for k in keys):
        return "moco"
    if any(k.startswith("module.encoder.") for k in keys):
        return "pycontrast"
    if any(k.startswith(("module.prototypes.", "module.projection_head.")) for k in keys):
        return "swav"
    if any("conv_seg." in k for k in keys):
        return "medicalnet"
    if all(k.startswith("module.") for k in keys):
        return "ddp"
    if any(k.startswith("backbone.") for k in keys) and not all(k.startswith("backbone.") for k in keys):
        return "lightning"
    return "torchvision"


def convert(source: dict, target: dict, layout: str) -> Converted:
    if layout not in LAYOUTS:
        raise CheckpointError(f"unknown layout {layout!r}; allowed: {allowed(LAYOUTS)}")
    return LAYOUTS[layout].convert(source, target)
