"""MedMNIST v2 (Yang et al., Scientific Data 10:41, 2023): every official 2D and 3D dataset at every published size.

Names, tasks, label names, URLs and MD5s come from `medmnist.INFO` so they can never drift from the official release;
this module only reads the `.npz` files into the channel-first uint8 layout of `ImageDataset`, checks them, and
turns every way a file can be wrong (missing, corrupt, wrong checksum, NaN labels) into a `DataError` naming it.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np
from medmnist import INFO

from medtransfer.data.base import SPLITS, ImageDataset, Split, labels_from_array
from medtransfer.errors import DataError, allowed
from medtransfer.hashing import file_digest

MEDMNIST_NAMES = tuple(INFO)
DEFAULT_ROOT = Path("~/.medmnist")
_TASKS = {
    "binary-class": "binary",
    "multi-class": "multiclass",
    "multi-label, binary-class": "multilabel",
    "ordinal-regression": "ordinal",
}


def available_sizes(name: str) -> tuple[int, ...]:
    """Sizes published for `name`, read off INFO's url keys (2D: 28, 64, 128, 224; 3D: 28, 64)."""
    return tuple(sorted(28 if key == "url" else int(key[4:]) for key in INFO[name] if key.startswith("url")))


def load_medmnist(
    name: str, root: str | Path | None = None, size: int = 28, download: bool = False, verify: bool = True
) -> ImageDataset:
    """Load `{root}/{name}.npz` (size 28) or `{root}/{name}_{size}.npz`, as the medmnist package names them.

    `download` fetches a missing file from the official URL and keeps it only if its MD5 matches; `verify` checks
    the MD5 of a file already on disk, so a truncated or altered copy is caught before any result depends on it.
    """
    if name not in INFO:
        raise DataError(f"medmnist: dataset {name!r} is unknown; allowed: {allowed(MEDMNIST_NAMES)}")
    info = INFO[name]
    if size not in available_sizes(name):
        raise DataError(f"{name}: size={size!r} is not published; allowed: {allowed(available_sizes(name))}")
    flag = "" if size == 28 else f"_{size}"
    url, md5 = info[f"url{flag}"], info[f"MD5{flag}"]
    root = Path(root if root is not None else DEFAULT_ROOT).expanduser()
    path = root / f"{name}{flag}.npz"
    if not path.exists():
        if not download:
            raise DataError(
                f"{name}: file {path} not found; allowed: set `download: true` to fetch it from {url}, "
                f"or point `root` at the folder holding {path.name}"
            )
        _download(url, path, md5)
    elif verify:
        actual = _md5(path)
        if actual != md5:
            raise DataError(f"{path}: MD5 {actual} does not match the official {md5}; allowed: the official file "
                            f"(delete it and download again from {url})")

    task = _TASKS[info["task"]]
    class_names = tuple(info["label"][k] for k in sorted(info["label"], key=int))
    spatial_dims = 3 if info["python_class"].endswith("3D") else 2
    arrays = _read_npz(path)
    splits = {
        s: Split(
            images=_channel_first(arrays[f"{s}_images"], spatial_dims, f"{path.name}: {s}_images"),
            labels=labels_from_array(arrays[f"{s}_labels"], task, len(class_names), f"{path.name}: {s}_labels"),
        )
        for s in SPLITS
    }
    return ImageDataset(
        name=name,
        task=task,
        class_names=class_names,
        spatial_dims=spatial_dims,
        description=f"MedMNIST v2 {name} at {size}px ({info['license']}). {info['description']}",
        **splits,
    ).validate()


def _md5(path: Path) -> str:
    return file_digest(path, "md5")


def _fetch(url: str, dest: Path) -> None:
    """Download `url` to `dest` (separate so tests can replace the network with a local copy)."""
    from torchvision.datasets.utils import download_url

    download_url(url, root=str(dest.parent), filename=dest.name)


def _download(url: str, path: Path, md5: str) -> None:
    """Fetch into a temporary name and move it into place only once the MD5 matches, so no bad file is left."""
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    part.unlink(missing_ok=True)  # a stale partial file would otherwise count as already downloaded
    try:
        _fetch(url, part)
        actual = _md5(part)
    except (OSError, RuntimeError) as e:  # torchvision raises RuntimeError when nothing arrived
        part.unlink(missing_ok=True)
        raise DataError(
            f"{path.name}: download from {url} failed ({e}); allowed: download it by hand into {path.parent} "
            f"(MD5 {md5})"
        ) from e
    if actual != md5:
        part.unlink()
        raise DataError(f"{path.name}: downloaded MD5 {actual} does not match the official {md5}; allowed: the "
                        f"official file from {url} (retry the download)")
    part.replace(path)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    keys = [f"{s}_{kind}" for s in SPLITS for kind in ("images", "labels")]
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in keys if k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DataError(f"{path}: cannot be read as a MedMNIST .npz ({type(e).__name__}: {e}); allowed: an "
                        "intact official file (delete it and download again)") from e
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise DataError(f"{path}: missing key(s) {', '.join(missing)}; allowed: a MedMNIST file with keys "
                        f"{allowed(keys)}")
    return arrays


def _channel_first(images: np.ndarray, spatial_dims: int, where: str) -> np.ndarray:
    """(N, *spatial) gray or (N, *spatial, C) colour, as MedMNIST stores them -> (N, C, *spatial)."""
    if images.ndim == spatial_dims + 1:
        return images[:, None]
    if images.ndim == spatial_dims + 2:
        return np.ascontiguousarray(np.moveaxis(images, -1, 1))
    axes = "H, W" if spatial_dims == 2 else "D, H, W"
    raise DataError(f"{where} has shape {images.shape}; allowed: (N, {axes}) or (N, {axes}, C)")
