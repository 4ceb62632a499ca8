"""A results store on a bad disk, through the real command line: read-only file or folder, ``--output`` a file, a
corrupt database, a full disk, a run folder deleted by hand. Each gives one ``error:`` line (exit 2) or a note, and
never changes a stored result."""

import hashlib
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import medtransfer.bench.runner as runner
from medtransfer.bench.store import ResultStore
from medtransfer.cli import main
from medtransfer.finetune.train import FineTuneResult

EXPERIMENT = {"name": "faults", "datasets": [{"name": "synthetic2d", "n_train": 40, "n_val": 20, "n_test": 20,
                                              "size": 16}],
              "backbone": {"name": "resnet_tiny"}, "strategies": ["end_to_end", "linear"], "label_fractions": [1.0],
              "seeds": [0, 1], "train": {"epochs": 2, "batch_size": 16}}


def fake_fine_tune(data, train_indices, backbone, strategy, view, train, hardware, seed, workdir, **kwargs):
    """``fine_tune`` without training, leaving the per-epoch log a real run leaves."""
    auc = 0.6 + 0.1 * seed
    pd.DataFrame({"epoch": [0, 1], "step": [1, 2], "train/loss": [1.0, 0.5], "val/auc": [auc - 0.1, auc]}).to_csv(
        Path(workdir) / "metrics.csv", index=False)
    n, k = len(data.test), data.num_classes
    return FineTuneResult(metrics={"auc": auc}, per_class={"auc": [auc] * k}, val_metrics={"auc": auc},
                          predictions={"index": np.arange(n), "y_true": data.test.labels,
                                       "scores": np.full((n, k), 1 / k, np.float32)}, timings={"fit_s": 0.1})


@pytest.fixture
def finished(tmp_path, monkeypatch, capsys):
    """An experiment folder with 4 finished runs, and the experiment file that made it."""
    monkeypatch.setattr(runner, "fine_tune", fake_fine_tune)
    experiment = tmp_path / "exp.yaml"
    experiment.write_text(yaml.safe_dump(EXPERIMENT))
    assert main(["run", str(experiment), "--output", str(tmp_path / "out"), "--no-progress"]) == 0
    capsys.readouterr()
    return tmp_path / "out", experiment


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def read_only():
    """Make a file or folder read-only for this process: ``chattr +i`` as root (root ignores permissions), else
    ``chmod``; undone after the test."""
    undo = []

    def apply(path: Path):
        if os.geteuid() == 0:
            if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)]).returncode:
                pytest.skip("running as root without chattr +i: cannot make a path read-only")
            undo.append(lambda: subprocess.run(["chattr", "-i", str(path)], check=True))
        else:
            mode = path.stat().st_mode
            path.chmod(0o555 if path.is_dir() else 0o444)
            undo.append(lambda: path.chmod(mode))

    yield apply
    for step in reversed(undo):
        step()


def check_reads(folder: Path, tmp_path: Path, capsys) -> None:
    """``results`` and ``report`` work on the store as it is."""
    assert main(["results", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "end_to_end" in out and "linear" in out and "(n=2)" in out
    assert main(["report", str(folder), "--output", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "report.html").exists()
    capsys.readouterr()


@pytest.mark.parametrize("which", ["file", "folder"])
def test_a_read_only_store_is_read_but_never_written(finished, tmp_path, capsys, read_only, which):
    folder, experiment = finished
    store = folder / "results.sqlite"
    assert not Path(f"{store}-wal").exists()  # the last writer checkpointed: the file holds every result
    check_reads(folder, tmp_path, capsys)
    for index in (Path(f"{store}-wal"), Path(f"{store}-shm")):  # a reader leaves them empty; an archive lacks them
        assert not index.exists() or index.name.endswith("-shm") or index.stat().st_size == 0
        index.unlink(missing_ok=True)
    before = digest(store)
    read_only(store if which == "file" else folder)
    check_reads(folder, tmp_path, capsys)
    assert main(["run", str(experiment), "--output", str(folder), "--no-progress"]) == 2
    line = one_error_line(capsys)
    assert str(store) in line and "'results' and 'report' can still read it" in line
    assert digest(store) == before


def test_report_into_a_read_only_folder_and_a_new_folder_under_one_are_one_error_line(finished, tmp_path, capsys,
                                                                                      read_only):
    folder, experiment = finished
    read_only(folder)
    assert main(["report", str(folder)]) == 2  # its default output, FOLDER/report, cannot be created
    assert "cannot write the report" in one_error_line(capsys)
    assert main(["run", str(experiment), "--output", str(folder / "new"), "--no-progress"]) == 2
    assert "cannot create the experiment folder" in one_error_line(capsys)
    assert not (folder / "new").exists() and not (folder / "report").exists()


def test_an_empty_file_named_results_sqlite_is_not_a_store(tmp_path, capsys):
    (tmp_path / "results.sqlite").touch()
    assert main(["results", str(tmp_path)]) == 2
    assert "holds no results yet" in one_error_line(capsys)
    assert (tmp_path / "results.sqlite").stat().st_size == 0


def test_output_that_is_a_file_is_one_error_line(finished, tmp_path, capsys):
    _, experiment = finished
    (tmp_path / "a_file").write_text("not a folder")
    assert main(["run", str(experiment), "--output", str(tmp_path / "a_file"), "--no-progress"]) == 2
    assert "a file has this name" in one_error_line(capsys)
    assert (tmp_path / "a_file").read_text() == "not a folder"


def test_a_corrupt_store_is_reported_and_left_as_it_is(finished, tmp_path, capsys):
    folder, experiment = finished
    store = folder / "results.sqlite"
    store.write_bytes(np.random.default_rng(0).bytes(8192))
    before = digest(store)
    for command in (["run", str(experiment), "--output", str(folder), "--no-progress"], ["results", str(folder)],
                    ["report", str(folder)]):
        assert main(command) == 2, command
        line = one_error_line(capsys)
        assert str(store) in line and "not a SQLite database" in line and "left as it is" in line
    assert digest(store) == before


def test_a_full_disk_stops_the_grid_with_one_line_and_keeps_finished_runs(finished, tmp_path, capsys, monkeypatch):
    """SQLite's own "database or disk is full" (SQLITE_FULL), produced by capping the database at its current
    size with ``PRAGMA max_page_count``, as a full disk does."""
    folder, experiment = finished
    with sqlite3.connect(folder / "results.sqlite") as con:
        pages = con.execute("PRAGMA page_count").fetchone()[0]
    connect = sqlite3.connect

    def capped(*args, **kwargs):
        con = connect(*args, **kwargs)
        con.execute(f"PRAGMA max_page_count = {pages}")
        return con

    monkeypatch.setattr(sqlite3, "connect", capped)
    more = {**EXPERIMENT, "seeds": list(range(2, 40))}  # 76 more runs: more than the pages left can hold
    experiment.write_text(yaml.safe_dump(more))
    assert main(["run", str(experiment), "--output", str(folder), "--no-progress"]) == 2
    line = one_error_line(capsys)
    assert "database or disk is full" in line and "free some space" in line
    monkeypatch.setattr(sqlite3, "connect", connect)
    rows = ResultStore(folder, read_only=True).rows(status=None)
    assert set(rows.loc[rows["seed"] < 2, "status"]) == {"done"} and (rows["seed"] < 2).sum() == 4
    assert (rows["status"] == "done").sum() >= 4  # the earlier runs, plus those that fitted before the disk filled


def test_a_run_failing_on_a_full_disk_stops_the_grid(finished, tmp_path, capsys, monkeypatch):
    """Training that fills the disk fails inside a library (torch's checkpoint writer, Lightning's CSV log); the grid
    stops there instead of failing every later run the same way."""
    import medtransfer.bench.store_faults as store_faults

    folder, experiment = finished

    def no_space(*args, **kwargs):
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(runner, "fine_tune", no_space)
    monkeypatch.setattr(store_faults.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 0))
    experiment.write_text(yaml.safe_dump({**EXPERIMENT, "seeds": [2, 3]}))
    assert main(["run", str(experiment), "--output", str(folder), "--no-progress"]) == 2
    line = one_error_line(capsys)
    assert "the disk is full (0 bytes left) and a run failed (RuntimeError: PytorchStreamWriter" in line
    rows = ResultStore(folder, read_only=True).rows(status=None)
    assert sorted(rows["status"]) == ["done"] * 4 + ["failed"]  # stopped after the first failure


def test_a_deleted_run_folder_is_named_and_its_result_kept(finished, tmp_path, capsys):
    folder, experiment = finished
    rows = ResultStore(folder, read_only=True).rows()
    gone = rows.loc[(rows["strategy"] == "end_to_end") & (rows["seed"] == 1), "run_id"].item()
    shutil.rmtree(folder / "runs" / gone[:16])
    note = f"note: 1 finished run(s) lost their folder (runs/{gone[:16]}): their metrics are kept and not redone"
    assert main(["results", str(folder)]) == 0
    assert note in capsys.readouterr().out
    assert main(["run", str(experiment), "--output", str(folder), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "0 run(s) done, 4 already finished" in out and note in out
    assert not (folder / "runs" / gone[:16]).exists()
    assert main(["report", str(folder), "--output", str(tmp_path / "report")]) == 0
    assert note in capsys.readouterr().out
    html = (tmp_path / "report" / "report.html").read_text()
    assert "Training curves under end_to_end: 1 of 2 finished runs have no training log" in html
