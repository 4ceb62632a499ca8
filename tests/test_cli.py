"""The ``medtransfer`` command line: help for every subcommand, exit codes, one-line errors, printed tables."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import medtransfer
import medtransfer.bench.runner as runner
from medtransfer.bench.store import ResultStore
from medtransfer.cli import main
from medtransfer.finetune.train import FineTuneResult

DATA = {"name": "synthetic2d", "n_train": 90, "n_val": 45, "n_test": 60, "size": 16}
EXPERIMENT = {
    "name": "tiny",
    "datasets": [DATA],
    "backbone": {"name": "resnet_tiny"},
    "strategies": ["end_to_end", "linear"],
    "label_fractions": [0.5, 1.0],
    "seeds": [0, 1],
    "train": {"epochs": 1, "batch_size": 32},
}


class FakeFineTune:
    """``fine_tune`` without training: auc grows with the label fraction, acc is fixed per strategy."""

    def __init__(self, error_at=None, error=RuntimeError):
        self.calls, self.error_at, self.error = 0, error_at, error

    def __call__(self, data, train_indices, backbone, strategy, view, train, hardware, seed, workdir, **kwargs):
        self.calls += 1
        if self.calls == self.error_at:
            raise self.error("boom")
        n, k = len(data.test), data.num_classes
        auc = 0.5 + 0.4 * len(train_indices) / len(data.train) + 0.02 * seed
        acc = 0.25 if strategy.label() == "linear" else 0.75
        return FineTuneResult(metrics={"auc": auc, "acc": acc}, per_class={"auc": [auc] * k}, val_metrics={"auc": auc},
                              predictions={"index": np.arange(n), "y_true": data.test.labels,
                                           "scores": np.full((n, k), 1 / k, np.float32)},
                              timings={"fit_s": 0.1, "test_s": 0.1})


@pytest.fixture
def fake(monkeypatch):
    fake = FakeFineTune()
    monkeypatch.setattr(runner, "fine_tune", fake)
    return fake


def write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


# --- help and version ---------------------------------------------------------------------------------------------

def test_console_script_help():
    script = Path(sys.executable).parent / "medtransfer"
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: medtransfer")
    for command in ("run", "pretrain", "results", "describe", "list"):
        assert command in out.stdout


@pytest.mark.parametrize("command, arguments", [
    ("run", ["experiment", "--output", "--metric", "--fail-fast", "--no-progress", "--verbose"]),
    ("pretrain", ["config", "--output", "--verbose"]),
    ("results", ["folder", "--metric", "--csv", "--config"]),
    ("report", ["folder", "--baseline", "--metric", "--output", "--config"]),
    ("describe", ["backbone", "--view", "--in-chans", "--input-size", "--small-stem"]),
    ("list", []),
])
def test_subcommand_help(capsys, command, arguments):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: medtransfer {command}")
    for argument in arguments:
        assert argument in out


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and medtransfer.__version__ in capsys.readouterr().out


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2 and "usage" in capsys.readouterr().err


# --- run ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("content, expected", [
    ({**EXPERIMENT, "epochs": 3}, "epochs: unknown key"),
    ({**EXPERIMENT, "train": {"epochs": "ten"}}, "train.epochs: 'ten' rejected"),
    ({**EXPERIMENT, "backbone": {"name": "resnet9000"}}, "unknown backbone 'resnet9000'"),
    ("name: x\ndatasets: [synthetic2d\n", "malformed YAML"),
    ("- a\n", "expected a mapping"),
    (None, "no such file"),
    ({**EXPERIMENT, "datasets": [{"name": "pneumoniamnist", "root": "empty"}]}, "pneumoniamnist.npz not found"),
])
def test_run_bad_experiment_is_one_error_line(tmp_path, capsys, fake, content, expected):
    path = tmp_path / "exp.yaml"
    (tmp_path / "empty").mkdir()
    if content is not None:
        write(path, content)
    assert main(["run", str(path), "--output", str(tmp_path / "out"), "--no-progress"]) == 2
    line = one_error_line(capsys)
    assert expected in line
    assert fake.calls == 0 and not (tmp_path / "out").exists()


def test_run_prints_table_and_folder_then_skips(tmp_path, capsys, fake):
    path = write(tmp_path / "exp.yaml", EXPERIMENT)
    out_dir = tmp_path / "out"
    assert main(["run", str(path), "--output", str(out_dir), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert fake.calls == 8
    assert "auc: mean ± std over seeds" in out
    header = next(line for line in out.splitlines() if line.startswith("dataset"))
    assert header.split() == ["dataset", "init", "strategy", "50%", "100%"]
    assert re.search(r"synthetic2d\s+random\s+linear\s+0\.710 ± 0\.014 \(n=2\)", out)
    assert "8 run(s) done, 0 already finished, 0 failed of 8" in out
    assert out.strip().splitlines()[-1] == f"results: {out_dir.resolve()}"

    assert main(["run", str(path), "--output", str(out_dir), "--no-progress", "--metric", "acc"]) == 0
    out = capsys.readouterr().out
    assert fake.calls == 8  # nothing ran again
    assert "0 run(s) done, 8 already finished, 0 failed of 8" in out and "acc: mean ± std" in out


def test_run_uses_output_from_the_file(tmp_path, capsys, fake):
    path = write(tmp_path / "exps" / "exp.yaml", {**EXPERIMENT, "seeds": [0], "label_fractions": [1.0],
                                                  "output": "results/here"})
    assert main(["run", str(path), "--no-progress"]) == 0
    folder = (tmp_path / "exps" / "results" / "here").resolve()
    assert capsys.readouterr().out.strip().endswith(f"results: {folder}")
    assert (folder / "results.sqlite").exists()


def test_run_with_a_failed_run_exits_1(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(runner, "fine_tune", FakeFineTune(error_at=2))
    path = write(tmp_path / "exp.yaml", EXPERIMENT)
    assert main(["run", str(path), "--output", str(tmp_path / "out"), "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "7 run(s) done, 0 already finished, 1 failed of 8" in captured.out
    assert "failed: " in captured.err and "boom" in captured.err


def test_run_interrupted_exits_130(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(runner, "fine_tune", FakeFineTune(error_at=3, error=KeyboardInterrupt))
    path = write(tmp_path / "exp.yaml", EXPERIMENT)
    assert main(["run", str(path), "--output", str(tmp_path / "out"), "--no-progress"]) == 130
    assert "interrupted" in capsys.readouterr().err
    statuses = list(ResultStore(tmp_path / "out").rows(status=None)["status"])
    assert statuses == ["done", "done", "interrupted"]


# --- results ------------------------------------------------------------------------------------------------------

@pytest.fixture
def finished(tmp_path, fake, capsys):
    folder = tmp_path / "out"
    assert main(["run", str(write(tmp_path / "exp.yaml", EXPERIMENT)), "--output", str(folder),
                 "--no-progress"]) == 0
    capsys.readouterr()
    return folder


def test_results_with_metric(finished, tmp_path, capsys):
    csv = tmp_path / "summary.csv"
    assert main(["results", str(finished), "--metric", "acc", "--csv", str(csv)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("acc: mean ± std over seeds")
    assert re.search(r"synthetic2d\s+random\s+end_to_end\s+0\.750 ± 0\.000 \(n=2\)\*\s+0\.750 ± 0\.000 \(n=2\)\*",
                     out)
    assert re.search(r"synthetic2d\s+random\s+linear\s+0\.250 ± 0\.000 \(n=2\)\s+0\.250", out)
    assert "unfinished" not in out
    import pandas as pd
    table = pd.read_csv(csv)
    assert list(table.columns) == ["dataset", "init", "strategy", "fraction", "mean", "std", "n", "warned"]
    assert len(table) == 4 and set(table["n"]) == {2} and set(table["warned"]) == {0}


def test_results_default_metric_and_unfinished_runs(finished, capsys):
    store = ResultStore(finished)
    labels = {"dataset": "synthetic2d", "init": "random", "strategy": "linear", "fraction": 0.1, "seed": 5}
    store.start("x" * 64, {}, labels)
    store.fail("x" * 64, "boom")
    assert main(["results", str(finished)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("auc: mean ± std") and "unfinished: {'failed': 1}" in out


def test_results_unknown_metric(finished, capsys):
    assert main(["results", str(finished), "--metric", "dice"]) == 2
    line = one_error_line(capsys)
    assert "'dice'" in line and "acc" in line and "auc" in line


def test_results_without_store(tmp_path, capsys):
    assert main(["results", str(tmp_path)]) == 2
    assert "no results.sqlite" in one_error_line(capsys)
    assert not (tmp_path / "results.sqlite").exists()  # looking does not create a store


def test_two_experiment_files_in_one_folder_give_separate_rows_never_n4(tmp_path, capsys, fake):
    folder = tmp_path / "out"
    for epochs in (1, 2):
        experiment = {**EXPERIMENT, "train": {"epochs": epochs, "batch_size": 32}}
        assert main(["run", str(write(tmp_path / f"exp{epochs}.yaml", experiment)), "--output", str(folder),
                     "--no-progress"]) == 0
    run_out = capsys.readouterr().out
    assert main(["results", str(folder)]) == 0
    out = capsys.readouterr().out
    for text in (run_out.split("8 run(s) done")[1], out):  # the second run's table, then results'
        assert "n=4" not in text
        keys = re.findall(r"^synthetic2d\s+random\s+linear\s+(\w{6})\s+0\.710 ± 0\.014 \(n=2\)", text, re.M)
        assert len(set(keys)) == 2
        legend = text.strip().splitlines()[-1] if text is out else text.split("\n\n")[0].splitlines()[-1]
        assert legend == f"config {min(keys)}: train.epochs={1 + (min(keys) == keys[1])}; {max(keys)}: " \
                         f"train.epochs={1 + (max(keys) == keys[1])}"
    assert main(["results", str(folder), "--config", keys[0]]) == 0
    one = capsys.readouterr().out
    assert "config" not in one.splitlines()[1] and re.search(r"random\s+linear\s+0\.710 ± 0\.014 \(n=2\)", one)
    assert main(["report", str(folder)]) == 2
    assert "mixes experiments" in one_error_line(capsys)


def test_run_and_results_list_the_runs_that_stored_warnings(tmp_path, capsys, monkeypatch):
    class Warned(FakeFineTune):
        def __call__(self, data, train_indices, backbone, strategy, *args, **kwargs):
            result = super().__call__(data, train_indices, backbone, strategy, *args, **kwargs)
            if strategy.label() == "linear" and len(train_indices) < len(data.train):
                result.warnings = ["selected epoch predicts one class ('healthy') for every test image"]
            return result

    monkeypatch.setattr(runner, "fine_tune", Warned())
    folder = tmp_path / "out"
    assert main(["run", str(write(tmp_path / "exp.yaml", EXPERIMENT)), "--output", str(folder),
                 "--no-progress"]) == 0
    run_out = capsys.readouterr().out
    assert main(["results", str(folder)]) == 0
    for out in (run_out, capsys.readouterr().out):
        assert re.search(r"random\s+linear\s+0\.710 ± 0\.014 \(n=2, 2 warned\)\*\s+0\.910 ± 0\.014 \(n=2\)\*\n", out)
        assert "2 run(s) finished with warnings" in out
        for seed in (0, 1):
            assert (f"  synthetic2d | random | linear | 50% | seed {seed}: selected epoch predicts one class "
                    "('healthy') for every test image") in out


# --- describe, list, pretrain -------------------------------------------------------------------------------------

def test_describe_resnet50(capsys):
    assert main(["describe", "resnet50", "--input-size", "64"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("resnet50: ") and "2D" in out
    sections = dict(re.findall(r"view '(\w+)'[^\n]*\n[^\n]*\n((?:\s+\d+ .*\n?)+)", out))
    assert set(sections) == {"stage", "block"}
    stage = [line.split() for line in sections["stage"].strip().splitlines()]
    block = [line.split() for line in sections["block"].strip().splitlines()]
    assert [row[:2] for row in stage] == [[str(i), f"q{i + 1}"] for i in range(4)]
    assert len(block) == 16 and [row[0] for row in block] == [str(i) for i in range(16)]
    assert [row[1] for row in block] == [f"q{i // 4 + 1}" for i in range(16)]
    assert "view 'stage' (default)" in out


def test_describe_unknown_backbone(capsys):
    assert main(["describe", "resnet9000"]) == 2
    assert "resnet_tiny" in one_error_line(capsys)


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    lines = {line.split(":")[0]: line for line in out.splitlines()}
    assert set(lines) == {"datasets", "backbones", "strategies", "methods", "metrics"}
    assert "synthetic2d" in lines["datasets"] and "pneumoniamnist" in lines["datasets"]
    assert "resnet_tiny (2D)" in lines["backbones"] and "resnet18_3d (3D)" in lines["backbones"]
    for name in ("end_to_end", "linear", "range", "truncate", "q1", "q2", "q3", "q4"):
        assert name in lines["strategies"]
    assert "simclr" in lines["methods"]
    assert "auc" in lines["metrics"] and "acc" in lines["metrics"]


def test_pretrain_bad_config(tmp_path, capsys):
    path = write(tmp_path / "pre.yaml", {"method": "simsiam", "data": DATA})
    assert main(["pretrain", str(path)]) == 2
    line = one_error_line(capsys)
    assert "'simsiam'" in line and "simclr" in line
