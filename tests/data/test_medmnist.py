import hashlib
import shutil
from pathlib import Path

import medmnist
import numpy as np
import pytest

from medtransfer.data import medmnist as mm
from medtransfer.data.base import TASKS
from medtransfer.errors import DataError

REAL = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "medmnist").resolve()


def _write(path, n_classes=2, spatial=(28, 28), channels=None, multilabel=False, n=(6, 3, 3), labels=None):
    """A small file in MedMNIST's own layout: (N, *spatial[, C]) uint8 images and (N, 1) or (N, L) labels."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, count in zip(("train", "val", "test"), n):
        shape = (count, *spatial) + ((channels,) if channels else ())
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        if multilabel:
            arrays[f"{split}_labels"] = np.eye(n_classes, dtype=np.uint8)[np.arange(count) % n_classes]
        else:
            arrays[f"{split}_labels"] = (np.arange(count) % n_classes).reshape(-1, 1).astype(np.uint8)
    arrays.update(labels or {})
    np.savez_compressed(path, **arrays)
    return arrays


def _md5(path):
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def test_gray_2d_file_becomes_channel_first_binary(tmp_path):
    raw = _write(tmp_path / "pneumoniamnist.npz")
    ds = mm.load_medmnist("pneumoniamnist", root=tmp_path, verify=False)
    assert ds.train.images.shape == (6, 1, 28, 28) and ds.val.images.shape == (3, 1, 28, 28)
    assert np.array_equal(ds.train.images[:, 0], raw["train_images"])
    assert ds.train.labels.dtype == np.int64 and ds.train.labels.tolist() == [0, 1, 0, 1, 0, 1]
    assert (ds.task, ds.class_names, ds.spatial_dims) == ("binary", ("normal", "pneumonia"), 2)


def test_rgb_2d_file_moves_channels_first(tmp_path):
    raw = _write(tmp_path / "bloodmnist.npz", n_classes=8, channels=3, n=(16, 3, 3))
    ds = mm.load_medmnist("bloodmnist", root=tmp_path, verify=False)
    assert ds.train.images.shape == (16, 3, 28, 28) and ds.in_chans == 3
    assert np.array_equal(ds.train.images[2, 1], raw["train_images"][2, :, :, 1])
    assert ds.task == "multiclass" and ds.num_classes == 8
    assert ds.class_names[0] == medmnist.INFO["bloodmnist"]["label"]["0"]


def test_3d_file_gets_a_channel_axis(tmp_path):
    _write(tmp_path / "organmnist3d.npz", n_classes=11, spatial=(28, 28, 28), n=(11, 2, 2))
    ds = mm.load_medmnist("organmnist3d", root=tmp_path, verify=False)
    assert ds.train.images.shape == (11, 1, 28, 28, 28) and ds.spatial_dims == 3 and ds.image_size == (28, 28, 28)


def test_multilabel_file_keeps_label_matrix(tmp_path):
    _write(tmp_path / "chestmnist.npz", n_classes=14, multilabel=True, n=(14, 3, 3))
    ds = mm.load_medmnist("chestmnist", root=tmp_path, verify=False)
    assert ds.task == "multilabel" and ds.train.labels.shape == (14, 14) and ds.class_names[13] == "hernia"


def test_larger_size_reads_the_suffixed_file(tmp_path):
    _write(tmp_path / "pneumoniamnist_64.npz", spatial=(64, 64))
    assert mm.load_medmnist("pneumoniamnist", root=tmp_path, size=64, verify=False).image_size == (64, 64)


def test_default_root_is_dot_medmnist_in_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".medmnist").mkdir()
    _write(tmp_path / ".medmnist" / "breastmnist.npz")
    assert mm.load_medmnist("breastmnist", verify=False).name == "breastmnist"


@pytest.mark.parametrize("name", mm.MEDMNIST_NAMES)
def test_every_official_dataset_has_a_task_and_sizes(name):
    assert mm._TASKS[medmnist.INFO[name]["task"]] in TASKS
    assert mm.available_sizes(name) == ((28, 64) if name.endswith("3d") else (28, 64, 128, 224))


def test_verify_accepts_matching_md5(tmp_path, monkeypatch):
    _write(tmp_path / "pneumoniamnist.npz")
    monkeypatch.setitem(medmnist.INFO["pneumoniamnist"], "MD5", _md5(tmp_path / "pneumoniamnist.npz"))
    assert len(mm.load_medmnist("pneumoniamnist", root=tmp_path).test) == 3


def test_verify_rejects_mismatching_md5_naming_both(tmp_path, monkeypatch):
    _write(tmp_path / "pneumoniamnist.npz")
    monkeypatch.setitem(medmnist.INFO["pneumoniamnist"], "MD5", "0" * 32)
    with pytest.raises(DataError) as err:
        mm.load_medmnist("pneumoniamnist", root=tmp_path)
    assert "0" * 32 in str(err.value) and _md5(tmp_path / "pneumoniamnist.npz") in str(err.value)


def test_nan_label_in_file_names_file_and_key(tmp_path):
    bad = np.array([[0.0], [1.0], [np.nan], [1.0], [0.0], [1.0]])
    _write(tmp_path / "pneumoniamnist.npz", labels={"train_labels": bad})
    with pytest.raises(DataError, match=r"pneumoniamnist\.npz: train_labels contains nan"):
        mm.load_medmnist("pneumoniamnist", root=tmp_path, verify=False)


def test_out_of_range_label_in_file_is_rejected(tmp_path):
    _write(tmp_path / "pneumoniamnist.npz", labels={"test_labels": np.array([[0], [1], [5]])})
    with pytest.raises(DataError, match=r"test_labels contains 5; allowed: 0\.\.1"):
        mm.load_medmnist("pneumoniamnist", root=tmp_path, verify=False)


def test_class_missing_from_train_is_rejected(tmp_path):
    _write(tmp_path / "pneumoniamnist.npz", labels={"train_labels": np.zeros((6, 1))})
    with pytest.raises(DataError, match=r"train has no example of class 1 \(pneumonia\)"):
        mm.load_medmnist("pneumoniamnist", root=tmp_path, verify=False)


def test_wrong_image_ndim_is_rejected(tmp_path):
    _write(tmp_path / "pneumoniamnist.npz", labels={"val_images": np.zeros((3, 784), np.uint8)})
    with pytest.raises(DataError, match=r"val_images has shape \(3, 784\)"):
        mm.load_medmnist("pneumoniamnist", root=tmp_path, verify=False)


def test_missing_key_is_named(tmp_path):
    np.savez(tmp_path / "pneumoniamnist.npz", train_images=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DataError, match="missing key.*train_labels"):
        mm.load_medmnist("pneumoniamnist", root=tmp_path, verify=False)


@pytest.mark.parametrize("keep", [0, 100, 0.6])
def test_corrupt_or_truncated_file_names_the_file(tmp_path, keep):
    path = tmp_path / "pneumoniamnist.npz"
    _write(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(keep * len(data)) if isinstance(keep, float) else keep])
    with pytest.raises(DataError, match=r"pneumoniamnist\.npz: cannot be read"):
        mm.load_medmnist("pneumoniamnist", root=tmp_path, verify=False)


def test_missing_file_suggests_download_or_root(tmp_path):
    with pytest.raises(DataError) as err:
        mm.load_medmnist("dermamnist", root=tmp_path, size=128)
    assert str(tmp_path / "dermamnist_128.npz") in str(err.value) and "download: true" in str(err.value)


def test_unknown_name_and_size_list_what_is_allowed(tmp_path):
    with pytest.raises(DataError, match="'mnist' is unknown; allowed: .*adrenalmnist3d.*vesselmnist3d"):
        mm.load_medmnist("mnist", root=tmp_path)
    with pytest.raises(DataError, match="size=128 is not published; allowed: 28, 64"):
        mm.load_medmnist("nodulemnist3d", root=tmp_path, size=128)


@pytest.fixture
def local_download(tmp_path, monkeypatch):
    """Replace the network with a copy of a file written here, so the real checksum logic runs on it."""
    source = tmp_path / "source.npz"
    _write(source)
    calls = []

    def fetch(url, dest):
        calls.append((url, dest))
        shutil.copyfile(source, dest)

    monkeypatch.setattr(mm, "_fetch", fetch)
    return source, calls


def test_download_fetches_official_url_and_keeps_a_verified_file(tmp_path, monkeypatch, local_download):
    source, calls = local_download
    monkeypatch.setitem(medmnist.INFO["pneumoniamnist"], "MD5", _md5(source))
    root = tmp_path / "new" / "root"
    ds = mm.load_medmnist("pneumoniamnist", root=root, download=True)
    assert calls[0][0] == medmnist.INFO["pneumoniamnist"]["url"]
    assert sorted(p.name for p in root.iterdir()) == ["pneumoniamnist.npz"] and len(ds.train) == 6


def test_download_with_wrong_checksum_leaves_no_file(tmp_path, monkeypatch, local_download):
    monkeypatch.setitem(medmnist.INFO["pneumoniamnist"], "MD5_64", "f" * 32)
    root = tmp_path / "root"
    with pytest.raises(DataError, match="downloaded MD5 .* does not match the official f{32}"):
        mm.load_medmnist("pneumoniamnist", root=root, size=64, download=True)
    assert local_download[1][0][0] == medmnist.INFO["pneumoniamnist"]["url_64"]
    assert list(root.iterdir()) == []


def test_failed_download_is_a_data_error_and_leaves_no_file(tmp_path, monkeypatch):
    def fetch(url, dest):
        dest.write_bytes(b"partial")
        raise OSError("network is unreachable")

    monkeypatch.setattr(mm, "_fetch", fetch)
    with pytest.raises(DataError, match="download from https://.* failed .*network is unreachable"):
        mm.load_medmnist("pneumoniamnist", root=tmp_path, download=True)
    assert list(tmp_path.iterdir()) == []


def _real(name):
    if not (REAL / f"{name}.npz").exists():
        pytest.skip(f"real MedMNIST file {REAL / name}.npz is absent (it lives in ../shared/data outside a clone)")
    return mm.load_medmnist(name, root=REAL, verify=True)


@pytest.mark.realdata
def test_real_pneumoniamnist():
    ds = _real("pneumoniamnist")
    assert [len(s) for s in (ds.train, ds.val, ds.test)] == [4708, 524, 624]
    assert ds.train.images.shape[1:] == (1, 28, 28) and ds.task == "binary"
    assert np.bincount(ds.train.labels).tolist() == [1214, 3494]


@pytest.mark.realdata
def test_real_adrenalmnist3d():
    ds = _real("adrenalmnist3d")
    assert [len(s) for s in (ds.train, ds.val, ds.test)] == [1188, 98, 298]
    assert ds.train.images.shape[1:] == (1, 28, 28, 28) and ds.task == "binary" and ds.spatial_dims == 3
    assert np.bincount(ds.train.labels).tolist() == [929, 259]
