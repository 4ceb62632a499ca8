"""A grid run killed mid-way resumes in its run folder — sequentially and as a Ray task run again — and stores the
numbers of the same run never interrupted, saying where it was resumed."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import medtransfer

from medtransfer.bench.grid import expand
from medtransfer.bench.ray_tasks import train_task
from medtransfer.bench.runner import prepare, run_experiment, run_identity
from medtransfer.bench.store import ResultStore
from medtransfer.config import ExperimentConfig
from medtransfer.config_files import validate_config
from medtransfer.data.normalisation import DEFAULT
from medtransfer.errors import ConfigError
from medtransfer.finetune.module import FineTuner
from medtransfer.finetune.resume import STATE_FILE
from medtransfer.interrupts import Interrupted

pytestmark = pytest.mark.usefixtures("one_thread")
CONFIG = {"name": "resume", "datasets": [{"name": "synthetic2d", "n_train": 64, "n_val": 32, "n_test": 32, "size": 16}],
          "backbone": {"name": "resnet_tiny"}, "inits": ["random"], "strategies": ["end_to_end"],
          "label_fractions": [1.0], "seeds": [0], "train": {"epochs": 3, "batch_size": 16, "augment": "light"},
          "hardware": {"accelerator": "cpu", "resume_every_s": 0}}  # a resume state at every epoch's start


def interrupt_in_epoch_1(monkeypatch):
    step = FineTuner.training_step

    def killing_step(self, batch, batch_idx):
        if self.current_epoch == 1:
            raise Interrupted(signal.SIGTERM)
        return step(self, batch, batch_idx)
    monkeypatch.setattr(FineTuner, "training_step", killing_step)


def stored(folder):
    store = ResultStore(folder)
    row = store.rows().iloc[0]
    return row, dict(np.load(store.run_dir(row["run_id"]) / "test_predictions.npz"))


def test_an_interrupted_grid_run_resumes_and_stores_the_uninterrupted_numbers(tmp_path, monkeypatch):
    cfg = validate_config(CONFIG, ExperimentConfig)
    run_experiment(cfg, tmp_path / "whole", progress=False)
    with monkeypatch.context() as patch:
        interrupt_in_epoch_1(patch)
        with pytest.raises(Interrupted):
            run_experiment(cfg, tmp_path / "resumed", progress=False)
    assert ResultStore(tmp_path / "resumed").rows(status="interrupted").shape[0] == 1
    run_experiment(cfg, tmp_path / "resumed", progress=False)
    (whole, whole_pred), (resumed, resumed_pred) = stored(tmp_path / "whole"), stored(tmp_path / "resumed")
    assert resumed["run_id"] == whole["run_id"]
    assert resumed["extra"]["resumed_from_epoch"] == [1] and "resumed_from_epoch" not in whole["extra"]
    assert resumed["metrics"] == whole["metrics"] and resumed["per_class"] == whole["per_class"]
    assert resumed["extra"]["best_epoch"] == whole["extra"]["best_epoch"]
    for key, value in whole_pred.items():
        assert np.array_equal(resumed_pred[key], value), key
    assert not (ResultStore(tmp_path / "resumed").run_dir(resumed["run_id"]) / STATE_FILE).exists()


def test_a_ray_task_run_again_in_its_run_folder_resumes(tmp_path, monkeypatch):
    """What a retried Ray task does (``max_retries``): ``train_task`` again on the same run folder."""
    cfg = validate_config(CONFIG, ExperimentConfig)
    spec = expand(cfg)[0]
    with monkeypatch.context() as patch:
        interrupt_in_epoch_1(patch)
        with pytest.raises(Interrupted):
            train_task(cfg, spec, {spec.init.name: None}, {spec.init.name: DEFAULT}, str(tmp_path), verbose=False)
    assert (tmp_path / STATE_FILE).exists()
    again = train_task(cfg, spec, {spec.init.name: None}, {spec.init.name: DEFAULT}, str(tmp_path), verbose=False)
    assert again["extra"]["resumed_from_epoch"] == [1] and again["extra"]["epochs_run"] == 3
    assert not (tmp_path / STATE_FILE).exists()


def test_resume_every_s_is_checked_and_leaves_the_run_id_alone():
    with pytest.raises(ConfigError, match=r"hardware.resume_every_s: -1 rejected: .*greater than or equal to 0"):
        validate_config({**CONFIG, "hardware": {"resume_every_s": -1}}, ExperimentConfig)
    ids = set()
    for every_s in (0, 60, 3600):
        cfg = validate_config({**CONFIG, "hardware": {"resume_every_s": every_s}}, ExperimentConfig)
        spec = expand(cfg)[0]
        ids.add(spec.run_id(cfg, *run_identity(prepare(cfg), spec)))
    assert len(ids) == 1


@pytest.mark.slow
def test_a_ray_worker_killed_after_a_resume_state_resumes_in_its_retry(tmp_path, monkeypatch):
    """The real thing: SIGKILL the Ray worker once the run has a resume state; Ray retries the task
    (``max_retries``), which resumes, and the stored numbers are those of the sequential uninterrupted run."""
    pytest.importorskip("ray")
    for key, value in {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
                       "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(Path(medtransfer.__file__).parents[1])}.items():
        monkeypatch.setenv(key, value)  # loopback only; workers import this checkout
    grid = {**CONFIG, "train": {**CONFIG["train"], "epochs": 8}}
    hardware = {"accelerator": "cpu", "resume_every_s": 0, "cpus_per_run": 1}  # same threads: same numbers
    run_experiment(validate_config({**grid, "hardware": hardware}, ExperimentConfig), tmp_path / "whole",
                   progress=False)
    killed = []

    def kill_once_a_state_exists():
        while not killed:
            for state in (tmp_path / "ray" / "runs").glob(f"*/{STATE_FILE}"):
                pid = json.loads((state.parents[1] / "worker.json").read_text())["pid"]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                break
            time.sleep(0.02)

    threading.Thread(target=kill_once_a_state_exists, daemon=True).start()
    cfg = validate_config({**grid, "hardware": {**hardware, "executor": "ray", "workers": 1}}, ExperimentConfig)
    summary = run_experiment(cfg, tmp_path / "ray", progress=False)
    assert killed and (summary.done, summary.failed) == (1, [])
    (whole, whole_pred), (resumed, resumed_pred) = stored(tmp_path / "whole"), stored(tmp_path / "ray")
    assert resumed["extra"]["resumed_from_epoch"][0] >= 1
    assert resumed["metrics"] == whole["metrics"]
    for key, value in whole_pred.items():
        assert np.array_equal(resumed_pred[key], value), key


KILLING_CLI = """import os, signal, sys
from medtransfer.finetune.module import FineTuner
from medtransfer.interrupts import Interrupted

def kill(self, batch, batch_idx):  # every rank stops at the same batch, as a Ctrl-C reaching both processes
    if os.environ.get("KILL_EPOCH") == str(self.current_epoch) and batch_idx == 1:
        raise Interrupted(signal.SIGTERM)

FineTuner.on_train_batch_start = kill
from medtransfer.cli import main
sys.exit(main())
"""


@pytest.mark.slow
def test_a_two_process_ddp_run_resumes_with_the_uninterrupted_numbers(tmp_path):
    """Each DDP process restores rank 0's random states and the shared resume state; Lightning re-runs the command
    for rank 1, so the interruption is planted in the script both processes run."""
    grid = {**CONFIG, "datasets": [{**CONFIG["datasets"][0], "n_test": 31}],  # odd: padded shards
            "hardware": {"accelerator": "cpu", "devices": 2, "ddp": True, "resume_every_s": 0}}
    (tmp_path / "exp.yaml").write_text(json.dumps(grid))
    (tmp_path / "cli.py").write_text(KILLING_CLI)

    def cli(output, kill_epoch=""):
        env = {**os.environ, "KILL_EPOCH": kill_epoch, "PYTHONPATH": str(Path(medtransfer.__file__).parents[1])}
        return subprocess.run([sys.executable, "cli.py", "run", "exp.yaml", "--output", output, "--no-progress"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert cli("whole").returncode == 0
    interrupted = cli("resumed", kill_epoch="1")
    assert interrupted.returncode == 130, interrupted.stderr[-2000:]
    done = cli("resumed")
    assert done.returncode == 0, done.stderr[-2000:]
    (whole, whole_pred), (resumed, resumed_pred) = stored(tmp_path / "whole"), stored(tmp_path / "resumed")
    assert resumed["extra"]["resumed_from_epoch"] == [1] and resumed["metrics"] == whole["metrics"]
    for key, value in whole_pred.items():
        assert np.array_equal(resumed_pred[key], value), key
