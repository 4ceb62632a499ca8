"""Several `medtransfer run` processes on one folder share the grid through run claims: no run trained twice."""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

import medtransfer
import medtransfer.bench.runner as runner
from medtransfer.bench.claims import pretraining_lock
from medtransfer.bench.grid import expand
from medtransfer.bench.runner import run_experiment
from medtransfer.bench.store import ResultStore

from test_runner import GRID, FakeFineTune, experiment, identity

SRC = str(Path(medtransfer.__file__).parents[1])
HERE = str(Path(__file__).parent)

# a grid process whose fine_tune logs each training start and takes a while; it starts when the test says go
CHILD = """
import sys, time
from pathlib import Path
sys.path.insert(0, {here!r})
import medtransfer.bench.runner as runner
from medtransfer.cli import main
from test_runner import FakeFineTune

fake = FakeFineTune()
def slow_fine_tune(data, indices, *args, **kwargs):
    with open({log!r}, "a") as log:
        log.write(f"{{kwargs.get('workdir', args[6])}}\\n")
    time.sleep(0.5)
    return fake(data, indices, *args, **kwargs)
runner.fine_tune = slow_fine_tune
print("ready", flush=True)
while not Path({go!r}).exists():
    time.sleep(0.05)
sys.exit(main(["run", {experiment!r}, "--output", {folder!r}, "--no-progress"]))
"""


@pytest.mark.slow
def test_two_processes_on_one_folder_train_each_run_once(tmp_path):
    grid = {**GRID, "seeds": [0, 1], "label_fractions": [0.5, 0.75, 1.0], "strategies": ["linear"]}  # 6 runs
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(grid))
    log, go, folder = tmp_path / "starts.log", tmp_path / "go", tmp_path / "out"
    script = CHILD.format(here=HERE, log=str(log), go=str(go), experiment=str(tmp_path / "exp.yaml"),
                          folder=str(folder))
    env = {**os.environ, "PYTHONPATH": SRC}
    children = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, env=env) for _ in range(2)]
    for child in children:
        assert child.stdout.readline() == "ready\n"
    go.touch()
    outputs = [child.communicate(timeout=300) for child in children]
    assert [child.returncode for child in children] == [0, 0], [err[-2000:] for _, err in outputs]
    starts = log.read_text().split()
    assert len(starts) == 6 and len(set(starts)) == 6  # every run trained exactly once
    rows = ResultStore(folder).rows(None)
    assert len(rows) == 6 and set(rows["status"]) == {"done"} and set(rows["attempts"]) == {1}
    assert len(set(rows["owner"])) == 2  # both processes trained part of the grid
    assert sorted(p.name for p in (folder / "runs").iterdir()) == sorted(Path(s).name for s in starts)


def test_run_held_by_a_live_process_is_waited_for_and_taken_over_when_its_lease_expires(tmp_path, monkeypatch,
                                                                                       capsys):
    cfg = experiment()
    specs = expand(cfg)
    held = specs[0].run_id(cfg, *identity(cfg, specs[0]))
    store = ResultStore(tmp_path)
    assert store.claim(held, specs[0].resolved(cfg, *identity(cfg, specs[0])), specs[0].labels(), "elsewhere:1:x", lease_s=600) == "claimed"

    def holder_stops_renewing(call):
        if call == 3:  # while this process trains its last own run, the holder's last renewal runs out in 1 s
            store.renew([held], "elsewhere:1:x", lease_s=1)

    fake = FakeFineTune(on_call=holder_stops_renewing)
    monkeypatch.setattr(runner, "fine_tune", fake)
    summary = run_experiment(cfg, tmp_path, progress=False)
    assert fake.labels() == [("linear", 45), ("end_to_end", 90), ("linear", 90), ("end_to_end", 45)]
    assert (summary.done, summary.skipped, summary.failed) == (4, 0, [])
    assert capsys.readouterr().err.count("waiting for 1 run(s) running elsewhere") == 1
    rows = ResultStore(tmp_path).rows(None).set_index("run_id")
    assert rows.loc[held, "attempts"] == 2 and set(rows["status"]) == {"done"}


def test_run_finished_by_the_holder_while_waiting_is_not_trained(tmp_path, monkeypatch):
    cfg = experiment()
    specs = expand(cfg)
    held = specs[0].run_id(cfg, *identity(cfg, specs[0]))
    store = ResultStore(tmp_path)
    store.claim(held, specs[0].resolved(cfg, *identity(cfg, specs[0])), specs[0].labels(), "elsewhere:1:x", lease_s=600)

    def finish_held(call):
        if call == 3:  # the holder finishes while this process trains its last run
            store.finish(held, {"auc": 0.99}, {}, {}, {}, owner="elsewhere:1:x")

    fake = FakeFineTune(on_call=finish_held)
    monkeypatch.setattr(runner, "fine_tune", fake)
    summary = run_experiment(cfg, tmp_path, progress=False)
    assert len(fake.calls) == 3
    assert (summary.done, summary.skipped) == (3, 1)
    assert ResultStore(tmp_path).rows().set_index("run_id").loc[held, "metric.auc"] == 0.99


def test_pretraining_lock_lets_one_process_at_a_time_train_into_a_folder(tmp_path):
    """Threads stand in for processes here: the lock is a file lock, exclusive between open files."""
    events = []

    def pretrain(name):
        with pretraining_lock(tmp_path / "pretrain" / "simclr-x"):
            events.append(("start", name))
            time.sleep(0.3)
            events.append(("end", name))

    workers = [threading.Thread(target=pretrain, args=(name,)) for name in "ab"]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert [kind for kind, _ in events] == ["start", "end", "start", "end"]
    assert events[0][1] == events[1][1]
