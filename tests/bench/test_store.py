import hashlib
import math
import os
import socket
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

import medtransfer
from medtransfer.bench.store import SCHEMA_VERSION, ClaimLost, ResultStore, _git_commit, config_hash
from medtransfer.errors import MedtransferError

LABELS = {"dataset": "pneumoniamnist", "init": "imagenet", "strategy": "linear", "fraction": 0.1, "seed": 0}
SRC = str(Path(medtransfer.__file__).parents[1])


def _labels(**changes):
    return {**LABELS, **changes}


def _finish(store, run_id, auc=0.9):
    store.finish(run_id, {"auc": auc, "acc": 0.8}, {"auc": [auc, math.nan]}, {"auc": 0.85}, {"fit_s": 12.5})


def _child(folder, body):
    """A separate Python process working on the store, as a second benchmark worker would."""
    header = f"import time\nfrom medtransfer.bench.store import ResultStore\nstore = ResultStore({str(folder)!r})\n"
    script = header + body
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)


def _writer(prefix, n):
    """Child body that starts and finishes ``n`` runs as fast as it can."""
    return f"""
print("ready", flush=True)
for i in range({n}):
    store.start(f"{prefix}{{i}}", {{}}, {{**{LABELS!r}, "seed": i}})
    store.finish(f"{prefix}{{i}}", {{"auc": 0.5}}, {{}}, {{}}, {{}})
"""


def test_round_trip(tmp_path):
    store = ResultStore(tmp_path / "exp")
    assert store.path == tmp_path / "exp" / "results.sqlite" and store.path.exists()
    store.start("r1", {"lr": 0.001, "data": {"root": Path("/d")}}, LABELS)
    per_class = {"auc": [0.9, math.nan]}
    store.finish("r1", {"auc": 0.9, "acc": 0.8}, per_class, {"auc": 0.85}, {"fit_s": 12.5}, {"epochs": 3})
    (row,) = store.rows().to_dict("records")
    assert row["run_id"] == "r1" and row["status"] == "done" and row["attempts"] == 1
    assert {k: row[k] for k in LABELS} == LABELS
    assert row["config"] == {"lr": 0.001, "data": {"root": "/d"}}
    assert row["metrics"] == {"auc": 0.9, "acc": 0.8}
    assert row["per_class"]["auc"][0] == 0.9 and math.isnan(row["per_class"]["auc"][1])
    assert row["val_metrics"] == {"auc": 0.85} and row["timings"] == {"fit_s": 12.5} and row["extra"] == {"epochs": 3}
    assert row["metric.auc"] == 0.9 and row["metric.acc"] == 0.8
    assert row["error"] is None and row["hostname"] == socket.gethostname()
    assert row["versions"]["numpy"] == np.__version__ and "python" in row["versions"]
    assert row["git_commit"] is None or len(row["git_commit"]) == 40
    started, finished = (datetime.fromisoformat(row[k]) for k in ("started_at", "finished_at"))
    assert started.utcoffset() == timedelta(0) and started <= finished <= datetime.now(timezone.utc)


def test_status_transitions(tmp_path):
    store = ResultStore(tmp_path)
    assert store.status("r1") is None
    with pytest.raises(ValueError, match="not started"):
        _finish(store, "r1")
    store.start("r1", {}, LABELS)
    assert store.status("r1") == "running"
    store.fail("r1", "KeyboardInterrupt", status="interrupted")
    assert store.status("r1") == "interrupted"
    with pytest.raises(ValueError, match="expected running"):
        _finish(store, "r1")
    with pytest.raises(ValueError, match="'failed' or 'interrupted'"):
        store.fail("r1", "boom", status="done")
    store.start("r2", {}, LABELS)
    _finish(store, "r2")
    assert store.status("r2") == "done"
    with pytest.raises(ValueError, match="is done"):
        store.fail("r2", "late Ctrl-C")
    assert store.rows()["error"].tolist() == [None]


def test_restarting_a_failed_run(tmp_path):
    store = ResultStore(tmp_path)
    store.start("r1", {"lr": 0.1}, LABELS)
    store.fail("r1", "CUDA out of memory")
    (failed,) = store.rows("failed").to_dict("records")
    assert failed["error"] == "CUDA out of memory" and failed["finished_at"] is not None
    store.start("r1", {"lr": 0.1}, LABELS)
    (row,) = store.rows(None).to_dict("records")
    assert row["status"] == "running" and row["attempts"] == 2
    assert row["error"] is None and row["finished_at"] is None and row["metrics"] is None
    _finish(store, "r1")
    assert store.rows()["attempts"].tolist() == [2]


def test_done_run_refuses_start(tmp_path):
    store = ResultStore(tmp_path)
    store.start("r1", {}, LABELS)
    _finish(store, "r1", auc=0.7)
    with pytest.raises(ValueError, match="already done"):
        store.start("r1", {}, LABELS)
    assert store.rows()["metric.auc"].tolist() == [0.7]


def test_labels_must_be_complete(tmp_path):
    store = ResultStore(tmp_path)
    with pytest.raises(ValueError, match="dataset, fraction, init, seed, strategy"):
        store.start("r1", {}, {k: v for k, v in LABELS.items() if k != "seed"})
    assert store.status("r1") is None


def test_rows_filters_by_status(tmp_path):
    store = ResultStore(tmp_path)
    for run_id, seed in (("a", 0), ("b", 1), ("c", 2)):
        store.start(run_id, {}, _labels(seed=seed))
    _finish(store, "a")
    store.fail("b", "boom")
    assert store.rows()["run_id"].tolist() == ["a"]
    assert store.rows("failed")["run_id"].tolist() == ["b"]
    assert store.rows(None)["status"].tolist() == ["done", "failed", "running"]
    assert "metric.auc" not in store.rows("running").columns
    with pytest.raises(ValueError, match="allowed: done, failed, interrupted, running"):
        store.rows("finished")


def test_killed_process_leaves_done_rows_and_a_running_row(tmp_path):
    store = ResultStore(tmp_path)
    store.start("done-run", {}, LABELS)
    _finish(store, "done-run")
    body = f"store.start('killed', {{}}, {LABELS!r})\nprint('started', flush=True)\ntime.sleep(60)"
    with _child(tmp_path, body) as child:
        assert child.stdout.readline() == "started\n"
        child.kill()
    rows = ResultStore(tmp_path).rows(None).set_index("run_id")
    assert rows.loc["killed", "status"] == "running"
    assert rows.loc["done-run", "status"] == "done" and rows.loc["done-run", "metric.auc"] == 0.9


def test_kill_during_writes_never_leaves_a_torn_row(tmp_path):
    with _child(tmp_path, _writer("r", 100_000)) as child:
        assert child.stdout.readline() == "ready\n"
        time.sleep(0.3)  # the child is now somewhere inside its write loop
        child.kill()
    with sqlite3.connect(tmp_path / "results.sqlite") as con:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    rows = ResultStore(tmp_path).rows(None)
    done = rows[rows["status"] == "done"]
    assert len(done) >= 1 and (done["metric.auc"] == 0.5).all() and done["finished_at"].notna().all()
    assert (rows["status"] == "running").sum() <= 1


def test_two_stores_on_one_folder_see_each_other(tmp_path):
    first, second = ResultStore(tmp_path), ResultStore(tmp_path)
    first.start("r1", {}, LABELS)
    assert second.status("r1") == "running"
    _finish(second, "r1")
    assert first.rows()["run_id"].tolist() == ["r1"]


def test_concurrent_writer_processes(tmp_path):
    store = ResultStore(tmp_path)
    with _child(tmp_path, _writer("b", 20)) as worker:
        assert worker.stdout.readline() == "ready\n"
        for i in range(20):  # meanwhile the worker writes its own 20 runs
            store.start(f"a{i}", {}, _labels(seed=i))
            _finish(store, f"a{i}")
    assert worker.returncode == 0
    assert sorted(store.rows()["run_id"]) == sorted([f"{p}{i}" for p in "ab" for i in range(20)])


def test_schema_version_is_checked(tmp_path):
    store = ResultStore(tmp_path)
    with sqlite3.connect(store.path) as con:
        assert con.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert con.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        con.execute("PRAGMA user_version = 99")
    with pytest.raises(MedtransferError, match="schema version 99"):
        ResultStore(tmp_path)


V1_SCHEMA = """CREATE TABLE runs (run_id TEXT PRIMARY KEY, status TEXT NOT NULL, dataset TEXT NOT NULL,
    init TEXT NOT NULL, strategy TEXT NOT NULL, fraction REAL NOT NULL, seed INTEGER NOT NULL,
    attempts INTEGER NOT NULL, started_at TEXT NOT NULL, finished_at TEXT, config TEXT NOT NULL, metrics TEXT, per_class TEXT, val_metrics TEXT,
    timings TEXT, extra TEXT, error TEXT, versions TEXT NOT NULL, git_commit TEXT, hostname TEXT NOT NULL)"""


def test_version_1_store_is_migrated_keeping_its_rows(tmp_path):
    """A store written before claims existed opens, keeps its rows, and its stale running row can be claimed."""
    with sqlite3.connect(tmp_path / "results.sqlite") as con:
        con.execute(V1_SCHEMA)
        for run_id, status, metrics in (("old-done", "done", '{"auc":0.75}'), ("old-running", "running", None)):
            con.execute("INSERT INTO runs (run_id, status, dataset, init, strategy, fraction, seed, attempts, "
                        "started_at, metrics, config, versions, hostname) VALUES (?, ?, 'd', 'random', 'linear', 1.0, "
                        "0, 1, '2025-01-01T00:00:00+00:00', ?, '{}', '{}', 'h')", (run_id, status, metrics))
        con.execute("PRAGMA user_version = 1")
    store = ResultStore(tmp_path)
    with sqlite3.connect(store.path) as con:
        assert con.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    assert store.rows()["metric.auc"].tolist() == [0.75]
    assert store.rows()["policy"].tolist() == ["none"]  # runs from before policies had none
    assert store.claim("old-done", {}, LABELS, "me:1:a", lease_s=60) == "done"
    assert store.claim("old-running", {}, LABELS, "me:1:a", lease_s=60) == "claimed"
    assert store.rows(None).set_index("run_id").loc["old-running", "attempts"] == 2
    assert ResultStore(tmp_path).rows(None)["run_id"].tolist() == ["old-done", "old-running"]  # reopening is a no-op


def test_claim_is_exclusive_until_the_lease_expires(tmp_path):
    store = ResultStore(tmp_path)
    other = "elsewhere:1:b"  # another host: only its lease tells whether it is alive
    assert store.claim("r1", {}, LABELS, other, lease_s=0.5) == "claimed"
    assert store.claim("r1", {}, LABELS, "me:2:a", lease_s=60) == "held"
    assert store.claim("r1", {}, LABELS, other, lease_s=0.5) == "claimed"  # its own claim again: no new attempt
    store.renew(["r1"], other, lease_s=0.5)
    time.sleep(0.6)
    assert store.claim("r1", {}, LABELS, "me:2:a", lease_s=60) == "claimed"  # stale: taken over
    (row,) = store.rows(None).to_dict("records")
    assert (row["owner"], row["attempts"]) == ("me:2:a", 2)
    with pytest.raises(ClaimLost, match="taken over"):
        _finish_as(store, "r1", other)
    _finish_as(store, "r1", "me:2:a")
    assert store.claim("r1", {}, LABELS, other, lease_s=60) == "done"


def _finish_as(store, run_id, owner):
    store.finish(run_id, {"auc": 0.9}, {}, {}, {}, owner=owner)


def test_claim_of_a_dead_local_process_is_taken_over_at_once(tmp_path):
    store = ResultStore(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    owner = f"{socket.gethostname()}:{dead.stdout.strip()}:c"
    assert store.claim("r1", {}, LABELS, owner, lease_s=3600) == "claimed"
    live = f"{socket.gethostname()}:{os.getpid()}:d"
    assert store.claim("r1", {}, LABELS, live, lease_s=3600) == "claimed"
    assert store.claim("r1", {}, LABELS, "me:2:a", lease_s=60) == "held"  # a live local owner keeps it


def test_run_that_ended_during_this_pass_is_not_claimed_again(tmp_path):
    store = ResultStore(tmp_path)
    store.claim("r1", {}, LABELS, "elsewhere:1:b", lease_s=60)
    store.fail("r1", "boom", owner="elsewhere:1:b")
    (row,) = store.rows(None).to_dict("records")
    assert store.claim("r1", {}, LABELS, "me:2:a", lease_s=60, since=row["started_at"]) == "ended"
    assert store.claim("r1", {}, LABELS, "elsewhere:1:b", lease_s=60, since=row["started_at"]) == "claimed"  # own
    store.fail("r1", "boom again", owner="elsewhere:1:b")
    assert store.claim("r1", {}, LABELS, "me:2:a", lease_s=60, since="2999-01-01") == "claimed"  # a later pass


def test_config_hash_is_canonical():
    config = {"model": {"name": "resnet18", "pretrained": True}, "lr": 0.001, "root": Path("/data")}
    reordered = {"root": "/data", "lr": 0.001, "model": {"pretrained": True, "name": "resnet18"}}
    assert config_hash(config) == config_hash(reordered)
    expected = '{"lr":0.001,"model":{"name":"resnet18","pretrained":true},"root":"/data"}'
    assert config_hash(config) == hashlib.sha256(expected.encode()).hexdigest()
    assert config_hash({"seed": np.int64(3)}) == config_hash({"seed": 3})


@pytest.mark.parametrize(
    "changed",
    [{"lr": 0.0011}, {"lr": 1}, {"model": {"name": "resnet50", "pretrained": True}}, {"extra": None}],
)
def test_config_hash_is_sensitive(changed):
    config = {"model": {"name": "resnet18", "pretrained": True}, "lr": 0.001}
    assert config_hash({**config, **changed}) != config_hash(config)


def test_save_predictions_is_atomic(tmp_path):
    store = ResultStore(tmp_path)
    run_dir = store.run_dir("0123456789abcdef0123")
    assert run_dir == tmp_path / "runs" / "0123456789abcdef" and run_dir.is_dir()
    scores, labels = np.array([[0.2, 0.8], [0.6, 0.4]]), np.array([1, 0])
    path = store.save_predictions("0123456789abcdef0123", scores=scores, labels=labels)
    assert path == run_dir / "test_predictions.npz"
    with np.load(path) as saved:
        np.testing.assert_array_equal(saved["scores"], scores)
        np.testing.assert_array_equal(saved["labels"], labels)
    with pytest.raises(Exception):  # an unpicklable array fails mid-write
        store.save_predictions("0123456789abcdef0123", scores=np.array([lambda: 0], dtype=object))
    assert [p.name for p in run_dir.iterdir()] == ["test_predictions.npz"]
    with np.load(path) as saved:  # the previous file is untouched
        np.testing.assert_array_equal(saved["scores"], scores)


def test_git_commit_is_none_without_git(monkeypatch):
    monkeypatch.setenv("PATH", "")
    assert _git_commit() is None
