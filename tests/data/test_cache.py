"""The dataset cache: hits, misses, invalidation, interrupted and concurrent decodes, and the CLI over it."""

import functools
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medtransfer.cache import cache_root, datasets_root
from medtransfer.cli import main
from medtransfer.data import decode as decode_module
from medtransfer.data import DATASETS, forget_loaded_datasets, load_dataset
from medtransfer.data.cache import clear_entries, list_entries
from medtransfer.data.fast2d import decode_image
from medtransfer.errors import DataError

SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.fixture
def xrays(tmp_path):
    """Twelve textured 8-bit 'X-rays' of two sizes listed in a CSV with two classes."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        shape = (48, 40) if i % 3 else (40, 48)
        smooth = np.cumsum(rng.normal(0, 8, shape), axis=0) + np.linspace(0, 120, shape[1])
        Image.fromarray(np.clip(smooth + 60, 0, 255).astype(np.uint8)).save(tmp_path / f"x{i}.png")
        rows.append({"path": f"x{i}.png", "label": ["normal", "pneumonia"][i % 2]})
    pd.DataFrame(rows).to_csv(tmp_path / "labels.csv", index=False)
    return tmp_path


@pytest.fixture
def decodes(monkeypatch):
    """Counts files decoded in this process (workers=1 decodes in-process)."""
    calls = []
    real = decode_module._attempt

    def counted(read, item):
        calls.append(item)
        return real(read, item)

    monkeypatch.setattr(decode_module, "_attempt", counted)
    return calls


def load(root, **options):
    forget_loaded_datasets()  # the on-disk cache, not the in-process memo, is under test
    return load_dataset("csv", root=str(root), csv="labels.csv", size=16, workers=1, **options)


def test_tests_write_into_a_private_cache(tmp_path):
    assert not str(cache_root()).startswith(str(Path.home() / ".cache"))
    assert datasets_root() == cache_root() / "datasets"


def test_second_load_memory_maps_the_same_arrays_without_decoding(xrays, decodes):
    first = load(xrays)
    assert len(decodes) == 12 and len(list_entries()) == 1
    second = load(xrays)
    assert len(decodes) == 12  # nothing decoded again
    for split in ("train", "val", "test"):
        a, b = getattr(first, split), getattr(second, split)
        assert isinstance(b.images, np.memmap) and b.images.dtype == np.uint8
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.labels, b.labels)
    assert images_of(second) == uncached(xrays, range(12))


def images_of(data):
    return sorted(image.tobytes() for split in ("train", "val", "test") for image in getattr(data, split).images)


def uncached(root, indices):
    return sorted(decode_image(root / f"x{i}.png", None, None, (16, 16), "pad", None, None).tobytes()
                  for i in indices)


def test_a_touched_or_added_file_invalidates_the_entry(xrays, decodes):
    load(xrays)
    os.utime(xrays / "x3.png", ns=(1, 1))
    load(xrays)
    assert len(decodes) == 24 and len(list_entries()) == 2
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(xrays / "x12.png")
    table = pd.read_csv(xrays / "labels.csv")
    pd.concat([table, pd.DataFrame([{"path": "x12.png", "label": "normal"}])]).to_csv(xrays / "labels.csv",
                                                                                      index=False)
    data = load(xrays)
    assert len(decodes) == 24 + 13 and len(data.train) + len(data.val) + len(data.test) == 13


def test_a_damaged_entry_is_decoded_again(xrays, decodes):
    first = load(xrays)
    (datasets_root() / list_entries()[0]["key"] / "train.image.npy").unlink()
    again = load(xrays)
    assert len(decodes) == 24 and images_of(again) == images_of(first)


def test_process_pool_gives_the_arrays_of_one_process(xrays):
    one = load(xrays)
    clear_entries()
    pooled = load_dataset("csv", root=str(xrays), csv="labels.csv", size=16, workers=2)
    np.testing.assert_array_equal(one.train.images, pooled.train.images)
    np.testing.assert_array_equal(one.test.images, pooled.test.images)


def test_skipped_files_are_reported_again_on_a_hit(xrays, decodes):
    (xrays / "x4.png").write_bytes(b"broken")
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(xrays / "x5.png")  # RGB among grey images
    first = load(xrays, on_error="skip")
    second = load(xrays, on_error="skip")
    assert len(decodes) == 12
    assert "Skipped 2 unusable file(s)" in second.description and "x4.png" in second.description
    np.testing.assert_array_equal(first.train.images, second.train.images)
    assert images_of(first) == uncached(xrays, [i for i in range(12) if i not in (4, 5)])
    with pytest.raises(DataError, match=r"2 of 12 file\(s\) cannot be used"):
        load(xrays)


def test_a_worker_raising_mid_way_leaves_no_entry(xrays, monkeypatch):
    real = decode_module._attempt

    def failing(read, item):
        if item.name == "x7.png":
            raise RuntimeError("worker died")
        return real(read, item)

    monkeypatch.setattr(decode_module, "_attempt", failing)
    with pytest.raises(RuntimeError, match="worker died"):
        load(xrays)
    assert list_entries() == [] and list(datasets_root().iterdir()) == []


SCRIPT = """
import os, sys, time
from pathlib import Path
import numpy as np
from medtransfer.data.decode import decode

files = sorted(Path(sys.argv[1]).glob("*.png"))
mode, marker = sys.argv[2], Path(sys.argv[3])

def read(path):
    from PIL import Image
    if mode == "die" and path.name == "x6.png":
        os._exit(3)  # killed mid-decode: no clean-up runs
    if mode == "race" and path == files[0]:
        marker.joinpath(str(os.getpid())).touch()  # both processes are decoding before either finishes
        while len(list(marker.iterdir())) < 2:
            time.sleep(0.01)
    return {"image": np.asarray(Image.open(path))[None, :40, :40]}

out = decode(files, read, ["train"] * len(files), [[f] for f in files], "raise", "race", 1)
print(int(out.arrays["train"]["image"].astype(np.int64).sum()))
"""


def run_script(args, cache):
    env = {**os.environ, "PYTHONPATH": SRC, "MEDTRANSFER_CACHE": str(cache)}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(SCRIPT), *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_killed_decode_leaves_no_usable_entry(xrays, tmp_path):
    cache = cache_root()
    died = run_script([xrays, "die", tmp_path], cache)
    assert died.wait(timeout=120) == 3
    assert list_entries() == []  # a staging folder may remain, but no key
    done = run_script([xrays, "ok", tmp_path], cache)
    out, err = done.communicate(timeout=120)
    assert done.returncode == 0, err
    assert len(list_entries()) == 1


def test_two_processes_filling_one_entry_end_with_one_valid_entry(xrays, tmp_path):
    marker = tmp_path / "markers"
    marker.mkdir()
    procs = [run_script([xrays, "race", marker], cache_root()) for _ in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e for _, e in outs]
    assert outs[0][0] == outs[1][0]
    assert len(list_entries()) == 1
    assert [p.name for p in datasets_root().iterdir()] == [list_entries()[0]["key"]]  # no staging left over


def test_load_dataset_returns_one_object_per_config(xrays):
    forget_loaded_datasets()
    a = load_dataset("csv", root=str(xrays), csv="labels.csv", size=16)
    assert load_dataset("csv", root=str(xrays), csv="labels.csv", size=16) is a
    assert load_dataset("csv", root=str(xrays), csv="labels.csv", size=12) is not a


def test_cli_lists_and_clears_entries(xrays, capsys):
    load(xrays)
    assert main(["cache", "list"]) == 0
    key = list_entries()[0]["key"]
    listing = capsys.readouterr().out
    assert key in listing and "csv" in listing and "1 entries" in listing
    assert main(["cache", "clear", "nosuchkey"]) == 2
    assert "no entry nosuchkey" in capsys.readouterr().err
    assert main(["cache", "clear", key]) == 0
    assert list_entries() == []


def test_grid_checks_and_inline_pretraining_share_one_dataset(monkeypatch):
    from medtransfer.bench.runner import prepare
    from medtransfer.config import ExperimentConfig
    from medtransfer.config_files import validate_config

    calls = []
    real = DATASETS["synthetic2d"]

    @functools.wraps(real)
    def counted(**options):
        calls.append(options)
        return real(**options)

    monkeypatch.setitem(DATASETS, "synthetic2d", counted)
    data = {"name": "synthetic2d", "n_train": 30, "n_val": 15, "n_test": 15, "size": 16}
    simclr = {"method": "simclr", "data": data, "backbone": {"name": "resnet_tiny"}, "epochs": 1, "batch_size": 8}
    cfg = validate_config({"name": "t", "datasets": [data], "backbone": {"name": "resnet_tiny"},
                           "inits": ["random", {"label": "simclr", "pretrain": simclr}], "strategies": ["end_to_end"],
                           "label_fractions": [1.0], "seeds": [0], "train": {"epochs": 1, "batch_size": 8}},
                          ExperimentConfig)
    prepared = prepare(cfg)
    assert len(calls) == 1
    assert load_dataset("synthetic2d", **{k: v for k, v in data.items() if k != "name"}) is \
        next(iter(prepared.data.values()))


def test_workers_does_not_change_run_or_pretraining_identities(xrays):
    from medtransfer.bench.grid import expand
    from medtransfer.config import ExperimentConfig, PretrainConfig
    from medtransfer.config_files import validate_config
    from medtransfer.pretrain.run import resolved_pretrain_config

    data = {"name": "csv", "root": str(xrays), "csv": "labels.csv", "size": 16}
    grid = {"name": "t", "backbone": {"name": "resnet_tiny"}, "inits": ["random"], "strategies": ["end_to_end"],
            "label_fractions": [1.0], "seeds": [0]}
    ids = [spec.run_id(cfg, None) for cfg in (validate_config({**grid, "datasets": [d]}, ExperimentConfig)
                                              for d in (data, {**data, "workers": 2})) for spec in expand(cfg)]
    assert ids[0] == ids[1]
    simclr = {"method": "simclr", "backbone": {"name": "resnet_tiny"}}
    pre = [resolved_pretrain_config(validate_config({**simclr, "data": d}, PretrainConfig))
           for d in (data, {**data, "workers": 2})]
    assert pre[0] == pre[1]
    other = validate_config({**grid, "datasets": [{**data, "size": 12}]}, ExperimentConfig)
    assert expand(other)[0].run_id(other, None) != ids[0]
