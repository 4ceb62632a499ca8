"""The grid on Ray, trained for real on CPU (tiny data, one epoch): same results as sequential, a joined cluster
shared by two drivers, a killed worker retried, Ctrl-C cleaned up. Ray runs on loopback only."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import yaml

import medtransfer
from medtransfer.bench.ray_connect import ray_session
from medtransfer.bench.runner import run_experiment
from medtransfer.bench.store import ResultStore
from medtransfer.config import ExperimentConfig, HardwareConfig
from medtransfer.config_files import validate_config
from medtransfer.models.checkpoint import sha256_file

pytest.importorskip("ray")

SRC = str(Path(medtransfer.__file__).parents[1])
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
DATA = {"name": "synthetic2d", "n_train": 90, "n_val": 45, "n_test": 60, "size": 16}
GRID = {  # 6 runs, one torch thread each wherever they run
    "name": "tiny", "datasets": [DATA], "backbone": {"name": "resnet_tiny"}, "strategies": ["end_to_end", "linear"],
    "label_fractions": [0.25, 0.5, 1.0], "seeds": [0], "train": {"epochs": 1, "batch_size": 32},
    "hardware": {"cpus_per_run": 1}}


@pytest.fixture(autouse=True)
def ray_env(monkeypatch):
    for key, value in RAY_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PYTHONPATH", SRC)  # Ray workers import this checkout


def write_grid(folder: Path, **changes) -> Path:
    path = folder / "exp.yaml"
    path.write_text(yaml.safe_dump({**GRID, **changes}))
    return path


def cli(*args, cwd: Path, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "medtransfer.cli", "run", *map(str, args), "--no-progress"],
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def finish(process: subprocess.Popen, timeout: float = 600) -> str:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-3000:]
    return out


def results(folder: Path):
    return ResultStore(folder).rows(status=None).set_index("run_id").sort_index()


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc, so no extra dependency)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").exists() and " Z " not in Path(f"/proc/{pid}/stat").read_text()


def test_ddp_in_a_ray_task_is_refused():
    from medtransfer.errors import ConfigError
    with pytest.raises(ConfigError, match="hardware: .*ddp runs one process per device"):
        validate_config({**GRID, "hardware": {"executor": "ray", "ddp": True}}, ExperimentConfig)


def test_a_local_instance_lives_on_loopback_and_its_workers_are_warmed(monkeypatch):
    """The instance medtransfer starts for --workers serves this driver alone: its node address is 127.0.0.1, so it
    neither listens for nor sends traffic to the machine's network address. It connects on a thread, which leaves
    the driver's SIGTERM handler in place, and its workers have imported the training code before the first run."""
    from medtransfer.bench.ray_connect import RayConnection
    for key, value in RAY_ENV.items():
        monkeypatch.setenv(key, value)
    handler = signal.getsignal(signal.SIGTERM)
    connection = RayConnection(HardwareConfig(executor="ray", workers=2, cpus_per_run=1), verbose=False)
    try:
        ray = connection.get()
        assert ray.util.get_node_ip_address() == "127.0.0.1"
        assert {node["NodeManagerAddress"] for node in ray.nodes()} == {"127.0.0.1"}
        assert signal.getsignal(signal.SIGTERM) is handler
        warmed = set(ray.get(connection.warming))
        assert len(warmed) == 2

        @ray.remote(num_cpus=1)
        def imported():
            return os.getpid(), "medtransfer.bench.ray_tasks" in sys.modules

        assert {ray.get(imported.remote()) for _ in range(4)} <= {(pid, True) for pid in warmed}
    finally:
        connection.close()
    assert not connection._ray.is_initialized()


def test_the_command_line_starts_ray_only_for_a_ray_grid(tmp_path, monkeypatch):
    """The early start reads the file's hardware section and the flags; anything it cannot read starts nothing."""
    from medtransfer.bench import ray_connect
    started = []
    monkeypatch.setattr(ray_connect, "RayConnection", lambda hw, verbose: started.append(hw) or hw)
    sequential, on_ray = write_grid(tmp_path), tmp_path / "ray.yaml"
    on_ray.write_text(yaml.safe_dump({**GRID, "hardware": {"executor": "ray", "workers": 3}}))
    (tmp_path / "bad.yaml").write_text("hardware: {executor: ray, workers: -1}\n")
    assert ray_connect.early_connection(sequential, None, None, False) is None
    assert ray_connect.early_connection(tmp_path / "bad.yaml", None, None, False) is None
    assert ray_connect.early_connection(tmp_path / "missing.yaml", 2, None, False) is None
    assert ray_connect.early_connection(on_ray, None, None, False).workers == 3
    hw = ray_connect.early_connection(sequential, 2, None, False)
    assert (hw.executor, hw.workers, hw.cpus_per_run) == ("ray", 2, 1)  # one core per run by default on Ray
    assert ray_connect.early_connection(sequential, None, "127.0.0.1:1", False).address == "127.0.0.1:1"
    assert len(started) == 3


def test_a_gpu_run_gets_a_fresh_worker_and_a_cpu_run_reuses_one(monkeypatch):
    """CUDA keeps the devices a process first saw: a worker reused for a run on another GPU would train on its old
    one. Ray is told about a GPU it does not have (nothing here touches CUDA), so only the scheduling is tested."""
    import ray

    from medtransfer.bench.ray_connect import task_options
    for key, value in RAY_ENV.items():
        monkeypatch.setenv(key, value)
    ray.init(address="local", num_cpus=1, num_gpus=1, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="WARNING",
             log_to_driver=False)
    try:
        pids = {}
        for gpus in (0, 0.5):
            hw = HardwareConfig(executor="ray", cpus_per_run=1, gpus_per_run=gpus)
            task = ray.remote(**task_options(hw))(lambda: os.getpid())
            pids[gpus] = [ray.get(task.remote()) for _ in range(3)]
    finally:
        ray.shutdown()
    assert len(set(pids[0])) == 1 and len(set(pids[0.5])) == 3


def test_runs_are_queued_seed_by_seed_and_longest_first_within_a_seed(tmp_path):
    """A grid should end on short runs: within a seed, runs training the backbone on the most images go first."""
    from types import SimpleNamespace

    from medtransfer.bench.ray_executor import RayGrid
    from medtransfer.bench.runner import prepare
    cfg = validate_config({**GRID, "seeds": [0, 1], "hardware": {"executor": "ray", "workers": 2,
                                                                 "cpus_per_run": 1}}, ExperimentConfig)
    fake_ray = SimpleNamespace(remote=lambda **options: lambda function: function)
    grid = RayGrid(fake_ray, cfg, prepare(cfg), ResultStore(tmp_path), verbose=False, fail_fast=False, lease_s=60)
    grid.bar = SimpleNamespace(update=lambda *args: None)
    grid._enqueue()
    order = [(spec.seed, spec.strategy.label(), spec.fraction) for spec, _ in grid.queue]
    assert order == [(seed, strategy, fraction) for seed in (0, 1) for strategy in ("end_to_end", "linear")
                     for fraction in (1.0, 0.5, 0.25)]


@pytest.mark.slow
def test_two_local_workers_store_exactly_the_sequential_results(tmp_path):
    sequential = run_experiment(validate_config(GRID, ExperimentConfig), tmp_path / "seq", progress=False)
    assert (sequential.done, sequential.failed) == (6, [])
    out = finish(cli(write_grid(tmp_path), "--output", "par", "--workers", "2", cwd=tmp_path))
    assert "6 run(s) done, 0 already finished, 0 failed of 6" in out
    seq, par = results(tmp_path / "seq"), results(tmp_path / "par")
    assert list(par.index) == list(seq.index) and len(par) == 6  # same run ids, no duplicate rows
    assert set(par["status"]) == {"done"} and set(par["attempts"]) == {1}
    for column in ("metrics", "per_class", "val_metrics"):
        assert list(par[column]) == list(seq[column]), column
    assert [e["n_train"] for e in par["extra"]] == [e["n_train"] for e in seq["extra"]]
    workers = set()
    for run_id in par.index:
        run_dir = tmp_path / "par" / "runs" / run_id[:16]
        workers.add(json.loads((run_dir / "worker.json").read_text())["pid"])
        sequential_dir = tmp_path / "seq" / "runs" / run_id[:16]
        for name in ("scores", "y_true"):
            np.testing.assert_array_equal(np.load(run_dir / "test_predictions.npz")[name],
                                          np.load(sequential_dir / "test_predictions.npz")[name])
    assert len(workers) == 2 and os.getpid() not in workers  # trained in two Ray worker processes


def fusion_grid(tmp_path: Path) -> dict:
    """A fusion whose first member is pre-trained (into a folder both executors reuse, so both key the runs by the
    same checkpoint) and whose second is a file with ImageNet statistics, each under its own strategy."""
    import torch

    from medtransfer.data.normalisation import IMAGENET
    from medtransfer.models.checkpoint import save_backbone
    from medtransfer.models.factory import create_backbone
    torch.manual_seed(2)
    b = save_backbone(create_backbone("resnet_tiny", 1, 16), tmp_path / "b.safetensors",
                      normalisation=IMAGENET.to_dict())
    pretraining = {"method": "simclr", "data": DATA, "backbone": {"name": "resnet_tiny"}, "epochs": 1,
                   "batch_size": 32, "output": str(tmp_path / "simclr")}
    fusion = {"label": "both", "fuse": [{"init": {"pretrain": pretraining}, "strategy": "q2"},
                                        {"init": {"checkpoint": str(b)}, "strategy": "linear"}]}
    return {"inits": [fusion], "label_fractions": [0.5, 1.0]}


def test_a_fusion_is_queued_once_its_members_pretraining_ends(tmp_path):
    from types import SimpleNamespace

    from medtransfer.bench.ray_executor import RayGrid
    from medtransfer.bench.runner import prepare, run_pretrainings
    cfg = validate_config({**GRID, **fusion_grid(tmp_path), "hardware": {"executor": "ray", "workers": 2}},
                          ExperimentConfig)
    prepared = prepare(cfg)
    run_pretrainings(cfg, prepare(cfg), tmp_path, verbose=False)  # the checkpoint a pre-training task would return
    (checkpoint,) = (tmp_path / "simclr").glob("**/backbone.safetensors")
    fake_ray = SimpleNamespace(remote=lambda **options: lambda function: function, get=lambda ref: str(checkpoint))
    grid = RayGrid(fake_ray, cfg, prepared, ResultStore(tmp_path), verbose=False, fail_fast=False, lease_s=60)
    grid.bar = SimpleNamespace(update=lambda *args: None)
    grid._enqueue()
    assert not grid.queue  # its content hash waits for the member's weights
    grid.pretraining["ref"] = "both[0]"
    grid._pretrained("ref")
    assert [(spec.init.name, spec.fraction) for spec, _ in grid.queue] == [("both", 1.0), ("both", 0.5)]


@pytest.mark.slow
def test_a_fusion_on_two_local_workers_stores_the_sequential_results(tmp_path):
    """The worker gets every member's file and normalisation: same run ids, numbers and predictions as sequential."""
    grid = fusion_grid(tmp_path)
    sequential = run_experiment(validate_config({**GRID, **grid}, ExperimentConfig), tmp_path / "seq", progress=False)
    assert (sequential.done, sequential.failed) == (2, [])
    out = finish(cli(write_grid(tmp_path, **grid), "--output", "par", "--workers", "2", cwd=tmp_path))
    assert "2 run(s) done, 0 already finished, 0 failed of 2" in out
    seq, par = results(tmp_path / "seq"), results(tmp_path / "par")
    assert list(par.index) == list(seq.index) and set(par["strategy"]) == {"members: range 0.25-0.5 + linear"}
    for column in ("metrics", "per_class", "val_metrics"):
        assert list(par[column]) == list(seq[column]), column
    for run_id in par.index:
        run_dir = tmp_path / "par" / "runs" / run_id[:16]
        assert json.loads((run_dir / "worker.json").read_text())["pid"] != os.getpid()
        np.testing.assert_array_equal(np.load(run_dir / "test_predictions.npz")["scores"],
                                      np.load(tmp_path / "seq" / "runs" / run_id[:16] / "test_predictions.npz")["scores"])


@pytest.mark.slow
def test_pretraining_is_a_task_and_other_inits_do_not_wait_for_it(tmp_path):
    pretraining = {"method": "simclr", "data": DATA, "backbone": {"name": "resnet_tiny"}, "epochs": 8,
                   "batch_size": 32}
    cfg = validate_config({**GRID, "inits": ["random", {"label": "simclr", "pretrain": pretraining}],
                           "strategies": ["linear"], "label_fractions": [1.0],
                           "hardware": {"executor": "ray", "workers": 2}}, ExperimentConfig)
    summary = run_experiment(cfg, tmp_path, progress=False)
    assert (summary.done, summary.failed) == (2, [])
    (checkpoint,) = (tmp_path / "pretrain").glob("*/backbone.safetensors")
    rows = ResultStore(tmp_path).rows().set_index("init")
    assert rows.loc["simclr", "config"]["init"]["sha256"] == sha256_file(checkpoint)
    assert rows.loc["simclr", "extra"]["init_file"] == str(checkpoint.resolve())
    submitted = datetime.fromisoformat(rows.loc["random", "started_at"]).timestamp()  # claimed just before submission
    assert submitted < checkpoint.stat().st_mtime - 1  # the random init's run did not wait for the pre-training


@pytest.mark.slow
def test_two_drivers_share_a_grid_on_a_separately_started_head(tmp_path):
    ray = str(Path(sys.executable).parent / "ray")
    port = 6390 + os.getpid() % 500
    subprocess.run([ray, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "2",
                    "--include-dashboard", "false", "--disable-usage-stats"], check=True, capture_output=True,
                   timeout=300)
    try:
        grid = write_grid(tmp_path)
        drivers = [cli(grid, "--output", "out", "--address", f"127.0.0.1:{port}", cwd=tmp_path) for _ in range(2)]
        outputs = [finish(driver) for driver in drivers]
        with ray_session(HardwareConfig(executor="ray", workers=1, cpus_per_run=1), verbose=False) as own:
            assert own.cluster_resources()["CPU"] == 1  # --workers starts its own instance beside a running head
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, timeout=120)
    rows = results(tmp_path / "out")
    assert len(rows) == 6 and set(rows["status"]) == {"done"} and set(rows["attempts"]) == {1}
    done = [int(out.split(" run(s) done")[0].split()[-1]) for out in outputs]
    assert sum(done) == 6  # every run trained by exactly one of the two drivers


@pytest.mark.slow
def test_worker_killed_mid_run_is_retried_and_the_grid_completes(tmp_path):
    cfg = validate_config({**GRID, "strategies": ["end_to_end"], "label_fractions": [1.0], "seeds": [0, 1],
                           "train": {"epochs": 4, "batch_size": 8}, "hardware": {"executor": "ray", "workers": 1}},
                          ExperimentConfig)
    killed = {}

    def kill_first_worker():
        while not killed:
            for marker in (tmp_path / "runs").glob("*/worker.json"):
                killed[marker.parent.name] = pid = json.loads(marker.read_text())["pid"]
                os.kill(pid, signal.SIGKILL)
                break
            time.sleep(0.05)

    killer = threading.Thread(target=kill_first_worker, daemon=True)
    killer.start()
    summary = run_experiment(cfg, tmp_path, progress=False)
    assert (summary.done, summary.failed) == (2, [])
    (run_dir, pid), = killed.items()
    assert json.loads((tmp_path / "runs" / run_dir / "worker.json").read_text())["pid"] != pid  # ran again elsewhere
    rows = results(tmp_path)
    assert set(rows["status"]) == {"done"} and set(rows["attempts"]) == {1}  # a retry, not a second claim


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_interrupts_the_runs_in_flight_and_shuts_ray_down(tmp_path, signum):
    """SIGTERM too: Ray connects off the main thread, so its own SIGTERM handler (``sys.exit``) never replaces
    medtransfer's."""
    grid = write_grid(tmp_path, train={"epochs": 200, "batch_size": 8})
    driver = cli(grid, "--output", "out", "--workers", "2", cwd=tmp_path)
    database = tmp_path / "out" / "results.sqlite"
    deadline = time.monotonic() + 300
    while len(list((tmp_path / "out" / "runs").glob("*/worker.json"))) < 2:  # both workers are training
        assert driver.poll() is None and time.monotonic() < deadline, driver.stderr.read()[-3000:]
        time.sleep(0.2)
    ray_processes = descendants(driver.pid)
    assert ray_processes
    driver.send_signal(signum)
    _, err = driver.communicate(timeout=120)
    assert driver.returncode == 130, err[-3000:]
    with sqlite3.connect(database) as con:
        statuses = dict(con.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall())
    assert statuses == {"interrupted": 2}
    time.sleep(2)
    assert not [pid for pid in ray_processes if alive(pid)]  # the local Ray instance is gone with its workers


SHIMS = {  # one-node SLURM on this machine: srun runs its command here, the allocation is this host on loopback
    "srun": '#!/bin/bash\nwhile [[ $1 == -* ]]; do [[ $1 == -w ]] && shift; shift; done\nexec "$@"\n',
    "scontrol": "#!/bin/bash\necho localhost\n",
    "hostname": "#!/bin/bash\necho 127.0.0.1\n",
}


@pytest.mark.slow
def test_slurm_recipe_runs_a_grid_on_a_one_node_allocation(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, script in SHIMS.items():
        (bin_dir / name).write_text(script)
        (bin_dir / name).chmod(0o755)
    sbatch = Path(__file__).parents[2] / "examples" / "slurm_ray.sbatch"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "localhost",
           "SLURM_CPUS_PER_TASK": "2", "SLURM_GPUS_PER_TASK": "0", "MEDTRANSFER": str(Path(sys.executable).parent),
           "RAY_PORT": str(6900 + os.getpid() % 500)}
    # files, not pipes: the Ray daemons the script leaves running (SLURM would end them with the job) keep them open
    with open(tmp_path / "stdout", "w") as out, open(tmp_path / "stderr", "w") as err:
        try:
            done = subprocess.run(["bash", str(sbatch), str(write_grid(tmp_path, output="out"))], cwd=tmp_path,
                                  env=env, stdout=out, stderr=err, timeout=900)
        finally:
            subprocess.run([str(Path(sys.executable).parent / "ray"), "stop", "--force"], capture_output=True,
                           timeout=120)
    assert done.returncode == 0, (tmp_path / "stderr").read_text()[-3000:]
    assert "6 run(s) done, 0 already finished, 0 failed of 6" in (tmp_path / "stdout").read_text()
    assert set(results(tmp_path / "out")["status"]) == {"done"}
