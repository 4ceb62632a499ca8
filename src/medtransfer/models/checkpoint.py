"""medtransfer's one checkpoint format: backbone weights in safetensors + a small JSON of metadata beside them.

safetensors cannot execute code when read, unlike pickle; the JSON keeps what a user needs to reuse the weights
(method, backbone, channels, input size, the input normalisation the weights were trained with, dataset, epochs,
version, the chain of inits) readable without torch.
Foreign ``.pth/.pt/.ckpt`` files are read with ``weights_only=True`` only.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file
from timm.models import adapt_input_conv

from medtransfer import __version__
from medtransfer.data.normalisation import Normalisation
from medtransfer.errors import CheckpointError
from medtransfer.hashing import file_digest
from medtransfer.models.backbones import Backbone
from medtransfer.models.readers import flatten_source, read_source

FORMAT = "medtransfer-backbone"
FORMAT_VERSION = 1
HEAD_PREFIXES = ("fc.", "head.", "classifier.", "head_drop.")  # classification heads a backbone never needs
WRAPPER_PREFIXES = ("module.", "backbone.", "model.")


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def sha256_file(path: Path) -> str:
    return file_digest(path, "sha256")


def backbone_metadata(backbone: Backbone) -> dict:
    return {"name": backbone.name, "spatial_dims": backbone.spatial_dims, "in_chans": backbone.in_chans,
            "input_size": list(backbone.input_size), "small_stem": backbone.small_stem}


def save_backbone(backbone: Backbone, path: str | Path, **metadata) -> Path:
    """Write ``path`` (.safetensors) and its .json sidecar atomically; returns the .safetensors path."""
    path = Path(path).with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in backbone.model.state_dict().items()}
    _atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata={"format": FORMAT}))
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "backbone": backbone_metadata(backbone),
            "medtransfer_version": __version__, "created": dt.datetime.now(dt.timezone.utc).isoformat(),
            "sha256": sha256_file(path), **metadata}
    _atomic_write(path.with_suffix(".json"), lambda tmp: tmp.write_text(json.dumps(meta, indent=2, default=str)))
    return path


def read_metadata(path: str | Path) -> dict:
    """The JSON sidecar of a medtransfer checkpoint, or {} for a foreign weights file."""
    sidecar = Path(path).with_suffix(".json")
    if not sidecar.exists():
        return {}
    try:
        return json.loads(sidecar.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{sidecar}: metadata is not valid JSON ({err})") from err


def file_normalisation(path: str | Path) -> Normalisation:
    """The input normalisation recorded beside a checkpoint; 0.5 / 0.5 when none is (a foreign file, an older
    medtransfer checkpoint: both were trained or imported without one)."""
    return Normalisation.from_dict(read_metadata(path).get("normalisation"))


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat state dict from a safetensors file (sha256 checked against its sidecar) or any file ``readers`` can
    read safely, with training-script wrappers (``state_dict``, DDP's ``module.`` ...) removed."""
    path = Path(path)
    source = read_source(path)
    if path.suffix == ".safetensors":
        meta = read_metadata(path)
        if meta.get("sha256") and meta["sha256"] != sha256_file(path):
            raise CheckpointError(f"{path}: sha256 differs from the one recorded in {path.with_suffix('.json')}")
        return source
    state, _ = flatten_source(source, path)
    for prefix in WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_backbone_weights(backbone: Backbone, state: dict[str, torch.Tensor], source: str,
                          normalisation: Normalisation | None = None) -> dict:
    """Load ``state`` into ``backbone`` exactly: only head keys may be left over; anything else is an error.

    The first convolution is adapted to the data's channel count the timm way (summed for grayscale, repeated and
    rescaled otherwise; grey weights are repeated and divided by the channel count) instead of failing or silently
    repeating the image. For grayscale, each channel's kernel is first scaled by ``normalisation``'s
    ``grey_weight_scales`` when the weights' channel stds differ, so the grey image normalised with
    ``normalisation.for_channels(1)`` gives the RGB network's response to the grey image copied into every channel
    (derivation in ``data/normalisation.py``). Returns what was adapted/ignored.
    """
    target = backbone.model.state_dict()
    state = backbone.adapt_state_dict(dict(state))
    report = {"adapted": [], "ignored": sorted(k for k in state if k not in target and k.startswith(HEAD_PREFIXES))}
    for key in report["ignored"]:
        state.pop(key)
    conv = backbone.first_conv
    if conv in state and conv in target and state[conv].shape[1] != target[conv].shape[1]:
        weight = state[conv]
        flat = weight.reshape(*weight.shape[:3], -1)  # 3D kernels as 2D for timm's adapter, then back
        if weight.shape[1] == 1:  # grey -> N channels: an image with N equal channels gives the grey response
            adapted = flat.repeat(1, target[conv].shape[1], 1, 1) / target[conv].shape[1]
        else:
            if target[conv].shape[1] == 1 and normalisation is not None and len(normalisation.std) == \
                    weight.shape[1] and len(set(normalisation.std)) > 1:
                scales = normalisation.grey_weight_scales().view(1, -1, 1, 1)
                flat = (flat.double() * scales).to(flat.dtype)
            try:
                adapted = adapt_input_conv(target[conv].shape[1], flat)
                if adapted.shape[1] != target[conv].shape[1]:  # timm hands N -> 3 back unchanged instead of raising
                    raise NotImplementedError("timm adapts 3 -> any and any -> 1 channels")
            except (NotImplementedError, AssertionError) as err:  # timm converts only 3 -> any and any -> 1
                raise CheckpointError(f"{source}: cannot adapt {conv} from {weight.shape[1]} to "
                                      f"{target[conv].shape[1]} input channels "
                                      f"({err or 'unsupported channel layout'})") from err
        state[conv] = adapted.reshape(weight.shape[0], adapted.shape[1], *weight.shape[2:])
        report["adapted"].append(f"{conv}: {weight.shape[1]} -> {target[conv].shape[1]} input channels")
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    mismatched = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(target[k].shape)}"
                        for k in set(state) & set(target) if state[k].shape != target[k].shape)
    problems = [f"{label} ({len(keys)}): {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
                for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched))
                if keys]
    if problems:
        raise CheckpointError(f"{source} does not fit backbone {backbone.name!r} "
                              f"(small_stem={backbone.small_stem}): " + "; ".join(problems))
    check_finite(state, source)
    backbone.model.load_state_dict(state, strict=True)
    return report


def check_finite(state: dict[str, torch.Tensor], source: str) -> None:
    """Refuse weights holding NaN/Inf: they would load silently and train to NaN losses (or to a model that
    predicts one class), far from the file that caused it. Every init and zoo import loads through here."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{source}: {len(bad)} tensor(s) hold NaN or infinite values: "
                              f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}; allowed: finite weights "
                              "(the file is corrupt, or saved from a training that diverged)")
