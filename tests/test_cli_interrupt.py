"""Ctrl-C and SIGTERM through the real command line, in a subprocess, once Lightning is training: exit status 130,
one line on stderr, the run in flight marked interrupted, finished runs untouched, pre-training resumable."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import medtransfer
from medtransfer.bench.store import ResultStore

DATA = {"name": "synthetic2d", "n_train": 32, "n_val": 16, "n_test": 16, "size": 16}
LONG = 100_000  # epochs: far more than the test waits for, so the signal always lands inside ``fit``
DONE = {"dataset": "synthetic2d", "init": "random", "strategy": "linear", "fraction": 0.5, "seed": 9}


def start(tmp_path: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(medtransfer.__file__).parents[1]),
                                                         os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "medtransfer.cli", *args], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    """Until ``path`` exists, i.e. Lightning has finished an epoch of this run; fails if the process ends first."""
    end = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            pytest.fail(f"ended before training started: {process.communicate()}")
        if time.monotonic() > end:
            process.kill()
            pytest.fail(f"{path} did not appear within {timeout} s")
        time.sleep(0.2)


def stop(process: subprocess.Popen, signum: int) -> tuple[int, list[str]]:
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    return process.returncode, err.strip().splitlines()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_run_stops_with_130_and_marks_the_run_in_flight_interrupted(tmp_path, signum):
    folder = tmp_path / "out"
    store = ResultStore(folder)
    store.start("d" * 64, {"finished": "earlier"}, DONE)
    store.finish("d" * 64, {"auc": 0.7}, {}, {}, {"fit_s": 1.0})
    before = store.rows().to_dict("records")
    experiment = {"name": "long", "datasets": [DATA], "backbone": {"name": "resnet_tiny"}, "strategies": ["linear"],
                  "label_fractions": [1.0], "seeds": [0], "train": {"epochs": LONG, "batch_size": 16}}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(experiment))
    process = start(tmp_path, "run", "exp.yaml", "--output", str(folder), "--no-progress")
    wait_for(next_run_checkpoint(folder, process), process)
    code, err = stop(process, signum)
    assert code == 130 and len(err) == 1, err
    assert err[0].startswith(f"interrupted by {signal.Signals(signum).name}: ")
    rows = ResultStore(folder).rows(status=None)
    interrupted = rows[rows["run_id"] != "d" * 64]
    assert list(interrupted["status"]) == ["interrupted"]
    assert list(interrupted["error"]) == [f"interrupted by {signal.Signals(signum).name}"]
    assert ResultStore(folder).rows().to_dict("records") == before  # the finished run: not touched


def next_run_checkpoint(folder: Path, process: subprocess.Popen) -> Path:
    """The best-epoch checkpoint of the one run the experiment starts, found once its folder exists."""
    end = time.monotonic() + 300
    while True:
        found = [p for p in (folder / "runs").glob("*") if p.name != "d" * 16] if (folder / "runs").exists() else []
        if found:
            return found[0] / "checkpoints" / "best.ckpt"
        if process.poll() is not None or time.monotonic() > end:
            process.kill()
            pytest.fail(f"no run folder appeared: {process.communicate()}")
        time.sleep(0.2)


def test_pretrain_stops_with_130_and_keeps_its_resume_state(tmp_path):
    config = {"method": "simclr", "data": DATA, "backbone": {"name": "resnet_tiny"}, "epochs": LONG,
              "batch_size": 16}
    (tmp_path / "pre.yaml").write_text(yaml.safe_dump(config))
    process = start(tmp_path, "pretrain", "pre.yaml", "--output", "pre")
    wait_for(tmp_path / "pre" / "lightning" / "last.ckpt", process)
    code, err = stop(process, signal.SIGINT)
    assert code == 130 and len(err) == 1 and err[0].startswith("interrupted by SIGINT: "), err
    assert (tmp_path / "pre" / "lightning" / "last.ckpt").exists()
    assert not (tmp_path / "pre" / "backbone.safetensors").exists()


def test_only_the_first_signal_raises_and_the_handlers_are_restored():
    from medtransfer.interrupts import Interrupted, signals_interrupt

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted, match="SIGTERM"), signals_interrupt():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises before this ends
        finally:  # recording the first interruption: a second signal must not cut it short
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
