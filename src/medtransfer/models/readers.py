"""Reading other people's weight files without ever running their code.

Pickles are the format of most published checkpoints, and unpickling can execute arbitrary code. So: PyTorch
pickles are read with ``torch.load(weights_only=True)``; JAX/Haiku ``.pkl`` trees with an unpickler that can build
only numpy arrays and plain containers; ``.npz`` without pickle; safetensors as they are. A file that needs anything
more is refused with the reason. ``flatten_source`` then turns any of these into one flat ``name -> tensor`` dict.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from medtransfer.errors import CheckpointError

TORCH_SUFFIXES = (".pth", ".pt", ".ckpt", ".tar", ".bin")
SUFFIXES = (".safetensors", *TORCH_SUFFIXES, ".npz", ".pkl")
# The wrappers training scripts put around a state dict; MoCo-style scripts vary, so the first present is used.
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "resnet")

# What a pickled numpy array needs, and nothing else: no functions, no other classes.
_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
}


class _ArraysOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _NUMPY_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name}")


def _refused(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"{path}: refused; {why}. medtransfer never unpickles code: re-save the weights as plain "
                           "tensors/arrays (state_dict, .npz or .safetensors)")


def _read_pickle(path: Path):
    try:
        with open(path, "rb") as f:
            return _ArraysOnlyUnpickler(f).load()
    except pickle.UnpicklingError as err:
        raise _refused(path, f"the pickle needs {err}, which only full unpickling (code execution) could "
                             "rebuild; only numpy arrays in dicts/lists are read") from err
    except (EOFError, ValueError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{path}: not a readable pickle of arrays (truncated or corrupt? {err})") from err


def read_source(path: str | Path):
    """The file's content as nested mappings of tensors/arrays; raises CheckpointError for anything unsafe."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    suffix = path.suffix
    if suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from err
    if suffix in TORCH_SUFFIXES:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - torch raises many types; each means "not read"
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            if isinstance(err, pickle.UnpicklingError) or "weights_only" in str(err):
                needs = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
                why = f"it pickles {needs.group(1)}" if needs else first
                raise _refused(path, f"it is not loadable with weights_only=True ({why})") from err
            raise CheckpointError(f"{path}: not a readable PyTorch file (truncated or corrupt? {first})") from err
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as err:
            raise CheckpointError(f"{path}: not a readable .npz of arrays ({err})") from err
    if suffix == ".pkl":
        return _read_pickle(path)
    raise CheckpointError(f"{path}: unknown checkpoint type {suffix!r}; allowed: {', '.join(SUFFIXES)}")


def unwrap(obj, path: Path | str) -> tuple[Mapping, str | None, list[str]]:
    """The state dict inside a training script's checkpoint: (state, wrapper key used, other top-level keys)."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: no state dict found (the file holds a {type(obj).__name__})")
    for key in WRAPPER_KEYS:
        if isinstance(obj.get(key), Mapping):
            return obj[key], key, sorted(str(k) for k in obj if k != key)
    return obj, None, []


def flatten_source(obj, path: Path | str) -> tuple[dict[str, torch.Tensor], dict]:
    """One flat ``name -> tensor`` dict (nested trees joined with '/'), and what was skipped to get it."""
    state, wrapper, others = unwrap(obj, path)
    flat: dict[str, torch.Tensor] = {}
    bad: list[str] = []

    def walk(node: Mapping, prefix: str) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, Mapping):
                walk(value, name + "/")
            elif isinstance(value, torch.Tensor):
                flat[name] = value
            elif isinstance(value, (np.ndarray, np.generic)) and value.dtype.kind in "biufc":
                # np.array, not np.ascontiguousarray: that makes 0-d arrays (num_batches_tracked) 1-d; np.generic:
                # numpy scalars, which is how np.int64 counters come back from a pickle
                flat[name] = torch.from_numpy(np.array(value, order="C"))
            else:
                bad.append(f"{name} ({type(value).__name__})")

    walk(state, "")
    if bad or not flat:
        raise CheckpointError(f"{path}: no state dict of tensors found" +
                              (f"; not tensors: {', '.join(bad[:8])}" if bad else ""))
    return flat, {"wrapper": wrapper, "not_read": others}
