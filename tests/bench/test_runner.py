"""The experiment runner: one stored row per run, resumable after crashes and Ctrl-C, bad input caught before training.

Grid logic is tested with a fake ``fine_tune``; two tests train for real (tiny data, one epoch), one of them with an
inline SimCLR pre-training as init.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

import medtransfer.bench.runner as runner
import medtransfer.pretrain.run as pretrain_run
from medtransfer.bench.grid import expand
from medtransfer.bench.runner import run_experiment
from medtransfer.bench.store import ResultStore
from medtransfer.config import ExperimentConfig
from medtransfer.config_files import validate_config
from medtransfer.data import label_fraction_indices, load_dataset
from medtransfer.data.normalisation import DEFAULT
from medtransfer.errors import CheckpointError, ConfigError, DataError
from medtransfer.finetune.policies import NO_POLICY
from medtransfer.finetune.train import FineTuneResult
from medtransfer.models.checkpoint import read_weights, save_backbone, sha256_file
from medtransfer.models.factory import create_backbone

DATA = {"name": "synthetic2d", "n_train": 90, "n_val": 45, "n_test": 60, "size": 16}
TINY_PRETRAIN = {"method": "simclr", "data": DATA, "backbone": {"name": "resnet_tiny"}, "epochs": 1,
                 "batch_size": 32}
GRID = {  # 4 runs, in this order: (end_to_end, 0.5), (linear, 0.5), (end_to_end, 1.0), (linear, 1.0)
    "name": "tiny",
    "datasets": [DATA],
    "backbone": {"name": "resnet_tiny"},
    "inits": ["random"],
    "strategies": ["end_to_end", "linear"],
    "label_fractions": [0.5, 1.0],
    "seeds": [0],
    "train": {"epochs": 1, "batch_size": 32},
}


def experiment(**changes) -> ExperimentConfig:
    return validate_config({**GRID, **changes}, ExperimentConfig)


class FakeFineTune:
    """Stands in for ``fine_tune``: records each call and returns a result shaped like the real one."""

    def __init__(self, fail_at=(), error=RuntimeError, on_call=None):
        self.calls = []
        self.fail_at, self.error, self.on_call = set(fail_at), error, on_call

    def __call__(self, data, train_indices, backbone, strategy, view, train, hardware, seed, workdir,
                 input_size=None, verbose=False, normalisation=DEFAULT, policy=NO_POLICY, resize_mode="linear"):
        self.calls.append({"strategy": strategy.label(), "n_train": len(train_indices), "seed": seed,
                           "workdir": Path(workdir), "backbone": backbone, "normalisation": normalisation,
                           "policy": policy.label()})
        if self.on_call:
            self.on_call(len(self.calls))
        if len(self.calls) in self.fail_at:
            raise self.error(f"boom in call {len(self.calls)}")
        n, k = len(data.test), data.num_classes
        scores = np.random.default_rng(seed).dirichlet(np.ones(k), n).astype(np.float32)
        auc = 0.5 + 0.4 * len(train_indices) / len(data.train) + (0.05 if strategy.label() == "linear" else 0)
        return FineTuneResult(metrics={"auc": auc, "acc": auc - 0.1}, per_class={"auc": [auc] * k},
                              val_metrics={"auc": auc}, timings={"fit_s": 1.5, "test_s": 0.5},
                              predictions={"index": np.arange(n), "y_true": data.test.labels, "scores": scores},
                              best_epoch=0, epochs_run=1, trainable_params=7, total_params=11)

    def labels(self):
        return [(c["strategy"], c["n_train"]) for c in self.calls]


@pytest.fixture
def fake(monkeypatch):
    fake = FakeFineTune()
    monkeypatch.setattr(runner, "fine_tune", fake)
    return fake


@pytest.fixture
def no_pretrain(monkeypatch):
    """Replaces the pre-training the runner calls; records calls instead of training."""
    calls = []

    def run(plan, *args, **kwargs):
        calls.append(args)
        raise AssertionError("pre-training must not run here")

    monkeypatch.setattr(runner.PretrainPlan, "run", run)
    return calls


def rows(folder, status="done"):
    return ResultStore(folder).rows(status=status)


def snapshot(folder):
    """What must survive a failed invocation: every row's identity, status, attempts and results."""
    table = rows(folder, status=None)
    return table[["run_id", "status", "attempts", "finished_at", "metrics"]].to_dict("records")


def identity(cfg, spec):
    """What the runner keys ``spec`` by besides its config (init hash, task, normalisation, labelled images)."""
    return runner.run_identity(runner.prepare(cfg), spec)


# --- a grid with a fake fine_tune ---------------------------------------------------------------------------------

def test_grid_stores_one_done_row_per_run(tmp_path, fake):
    folder = tmp_path / "exp"
    cfg = experiment()
    summary = run_experiment(cfg, folder, progress=False)
    assert (summary.folder, summary.total, summary.skipped, summary.done, summary.failed) == (folder, 4, 0, 4, [])
    assert fake.labels() == [("end_to_end", 45), ("linear", 45), ("end_to_end", 90), ("linear", 90)]

    table = rows(folder)
    ids = [spec.run_id(cfg, *identity(cfg, spec)) for spec in expand(cfg)]
    assert list(table["run_id"]) == ids and set(table["status"]) == {"done"}
    assert list(table["strategy"]) == ["end_to_end", "linear"] * 2
    assert list(table["fraction"]) == [0.5, 0.5, 1.0, 1.0] and set(table["dataset"]) == {"synthetic2d"}
    data = load_dataset("synthetic2d", **{k: v for k, v in DATA.items() if k != "name"})
    for row, call in zip(table.to_dict("records"), fake.calls):
        assert row["metrics"]["auc"] == pytest.approx(row["metric.auc"]) and "acc" in row["metrics"]
        assert row["per_class"] == {"auc": [row["metric.auc"]] * 3}
        assert row["timings"] == {"fit_s": 1.5, "test_s": 0.5} and row["val_metrics"]["auc"] == row["metric.auc"]
        extra = row["extra"]
        assert extra["n_train"] == call["n_train"] and extra["epochs_run"] == 1 and extra["init_file"] == ""
        assert extra["class_counts"]["n"] == call["n_train"] == sum(extra["class_counts"]["per_class"])
        assert extra["class_names"] == list(data.class_names)
        assert row["config"]["seed"] == 0 and call["normalisation"] == DEFAULT  # a random init: 0.5 / 0.5
        assert row["config"]["init"] == {"kind": "random", "sha256": None, "normalisation": DEFAULT.to_dict()}
        run_dir = folder / "runs" / row["run_id"][:16]
        assert call["workdir"] == run_dir
        with np.load(run_dir / "test_predictions.npz") as npz:
            np.testing.assert_array_equal(npz["index"], np.arange(60))
            np.testing.assert_array_equal(npz["y_true"], data.test.labels)
            assert npz["scores"].shape == (60, 3)



def test_each_run_trains_under_its_policy_and_stores_it(tmp_path, fake):
    cfg = experiment(policies=["none", {"label_smoothing": 0.1}])
    run_experiment(cfg, tmp_path / "exp", progress=False)
    assert sorted(c["policy"] for c in fake.calls) == ["label_smoothing 0.1"] * 4 + ["none"] * 4
    table = rows(tmp_path / "exp")
    assert sorted(table["policy"]) == ["label_smoothing 0.1"] * 4 + ["none"] * 4

def test_experiment_without_strategies_fine_tunes_end_to_end(tmp_path, fake):
    cfg = validate_config({k: v for k, v in GRID.items() if k != "strategies"}, ExperimentConfig)
    summary = run_experiment(cfg, tmp_path, progress=False)
    assert summary.done == 2 and fake.labels() == [("end_to_end", 45), ("end_to_end", 90)]


def test_subsets_follow_fraction_and_seed(tmp_path, fake):
    run_experiment(experiment(strategies=["linear"], label_fractions=[0.1], seeds=[0, 1]), tmp_path, progress=False)
    data = load_dataset("synthetic2d", **{k: v for k, v in DATA.items() if k != "name"})
    for seed in (0, 1):
        expected = label_fraction_indices(data.train.labels, data.task, 0.1, seed)
        assert [c["n_train"] for c in fake.calls if c["seed"] == seed] == [len(expected)]


def test_rerun_skips_everything(tmp_path, fake):
    cfg = experiment()
    run_experiment(cfg, tmp_path, progress=False)
    before = snapshot(tmp_path)
    fake.calls.clear()
    summary = run_experiment(cfg, tmp_path, progress=False)
    assert fake.calls == []
    assert (summary.total, summary.skipped, summary.done, summary.failed) == (4, 4, 0, [])
    assert snapshot(tmp_path) == before


def test_bigger_grid_runs_only_the_new_runs(tmp_path, fake):
    run_experiment(experiment(), tmp_path, progress=False)
    fake.calls.clear()
    summary = run_experiment(experiment(seeds=[0, 1]), tmp_path, progress=False)
    assert (summary.total, summary.skipped, summary.done) == (8, 4, 4)
    assert {c["seed"] for c in fake.calls} == {1} and len(fake.calls) == 4


def test_output_folder_defaults(tmp_path, fake, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_experiment(experiment(strategies=["linear"], label_fractions=[1.0]), progress=False).folder \
        == Path("runs") / "tiny"
    assert (tmp_path / "runs" / "tiny" / "results.sqlite").exists()
    cfg = experiment(strategies=["linear"], label_fractions=[1.0], output=str(tmp_path / "configured"))
    assert run_experiment(cfg, progress=False).folder == tmp_path / "configured"


def test_crash_in_one_run_keeps_the_others_and_is_redone_next_time(tmp_path, monkeypatch):
    crashing = FakeFineTune(fail_at={3})
    monkeypatch.setattr(runner, "fine_tune", crashing)
    cfg = experiment()
    summary = run_experiment(cfg, tmp_path, progress=False)
    assert len(crashing.calls) == 4  # the 4th still ran
    assert (summary.total, summary.skipped, summary.done) == (4, 0, 3)
    assert len(summary.failed) == 1 and "boom in call 3" in summary.failed[0]
    assert "'strategy': 'end_to_end'" in summary.failed[0] and "'fraction': 1.0" in summary.failed[0]

    assert list(rows(tmp_path, status=None)["status"]) == ["done", "done", "failed", "done"]
    failed = rows(tmp_path, status="failed").iloc[0]
    assert "RuntimeError: boom in call 3" in failed["error"] and "Traceback" in failed["error"]
    assert failed["metrics"] is None
    done_before = snapshot(tmp_path)

    again = FakeFineTune()
    monkeypatch.setattr(runner, "fine_tune", again)
    summary = run_experiment(cfg, tmp_path, progress=False)
    assert again.labels() == [("end_to_end", 90)]
    assert (summary.skipped, summary.done, summary.failed) == (3, 1, [])
    after = rows(tmp_path, status=None)
    assert set(after["status"]) == {"done"}
    assert list(after["attempts"]) == [1, 1, 2, 1]
    assert [r for r in snapshot(tmp_path) if r["attempts"] == 1] == [r for r in done_before if r["status"] == "done"]


def test_fail_fast_reraises(tmp_path, monkeypatch):
    crashing = FakeFineTune(fail_at={2})
    monkeypatch.setattr(runner, "fine_tune", crashing)
    with pytest.raises(RuntimeError, match="boom in call 2"):
        run_experiment(experiment(), tmp_path, fail_fast=True, progress=False)
    assert len(crashing.calls) == 2
    assert list(rows(tmp_path, status=None)["status"]) == ["done", "failed"]


def test_keyboard_interrupt_marks_interrupted_and_rerun_continues(tmp_path, monkeypatch):
    interrupted = FakeFineTune(fail_at={2}, error=KeyboardInterrupt)
    monkeypatch.setattr(runner, "fine_tune", interrupted)
    cfg = experiment()
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, tmp_path, progress=False)
    assert len(interrupted.calls) == 2  # nothing after the interrupt
    table = rows(tmp_path, status=None)
    assert list(table["status"]) == ["done", "interrupted"]
    assert "interrupted" in table["error"].iloc[1]
    first = snapshot(tmp_path)[0]

    again = FakeFineTune()
    monkeypatch.setattr(runner, "fine_tune", again)
    summary = run_experiment(cfg, tmp_path, progress=False)
    assert again.labels() == [("linear", 45), ("end_to_end", 90), ("linear", 90)]
    assert (summary.total, summary.skipped, summary.done, summary.failed) == (4, 1, 3, [])
    assert snapshot(tmp_path)[0] == first
    assert list(rows(tmp_path)["attempts"]) == [1, 2, 1, 1]


def test_run_finished_meanwhile_by_another_process_is_skipped(tmp_path, monkeypatch):
    """Two workers may share a folder; a run the other one finished is neither redone nor a crash."""
    cfg = experiment()
    specs = expand(cfg)
    second = specs[1].run_id(cfg, *identity(cfg, specs[1]))

    def finish_second_elsewhere(call):
        if call == 1:
            other = ResultStore(tmp_path)
            other.start(second, specs[1].resolved(cfg, *identity(cfg, specs[1])), specs[1].labels())
            other.finish(second, {"auc": 0.99}, {}, {}, {})

    fake = FakeFineTune(on_call=finish_second_elsewhere)
    monkeypatch.setattr(runner, "fine_tune", fake)
    summary = run_experiment(cfg, tmp_path, progress=False)
    assert fake.labels() == [("end_to_end", 45), ("end_to_end", 90), ("linear", 90)]
    assert (summary.total, summary.skipped, summary.done, summary.failed) == (4, 1, 3, [])
    table = rows(tmp_path).set_index("run_id")
    assert len(table) == 4 and table.loc[second, "metric.auc"] == 0.99


# --- bad input fails in prepare(), before any training, leaving stored results alone --------------------------------

@pytest.fixture
def finished(tmp_path, fake):
    """An experiment folder holding 4 done runs."""
    folder = tmp_path / "exp"
    run_experiment(experiment(), folder, progress=False)
    fake.calls.clear()
    return folder


def write_medmnist(folder: Path, nan_label: bool) -> Path:
    """A small file in MedMNIST's layout (pneumoniamnist: 28 px gray, binary labels as (N, 1) floats)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 20), ("val", 8), ("test", 8)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 2).astype(np.float64)[:, None]
        if nan_label and split == "train":
            labels[3, 0] = np.nan
        arrays[f"{split}_labels"] = labels
    path = folder / "pneumoniamnist.npz"
    np.savez(path, **arrays)
    return path


def bad_dataset_missing(tmp_path):
    (tmp_path / "empty").mkdir()
    return {"datasets": [DATA, {"name": "pneumoniamnist", "root": str(tmp_path / "empty")}]}, DataError, \
        "pneumoniamnist.npz not found"


def bad_dataset_nan(tmp_path):
    write_medmnist(tmp_path / "nan", nan_label=True)
    return {"datasets": [DATA, {"name": "pneumoniamnist", "root": str(tmp_path / "nan"), "verify": False}]}, \
        DataError, "train_labels contains nan"


def bad_checkpoint_missing(tmp_path):
    return {"inits": ["random", {"checkpoint": str(tmp_path / "nowhere.safetensors")}]}, CheckpointError, \
        "nowhere.safetensors does not exist"


def bad_checkpoint_other_backbone(tmp_path):
    path = save_backbone(create_backbone("resnet18", 1, 16), tmp_path / "r18.safetensors")
    return {"inits": ["random", {"checkpoint": str(path)}]}, CheckpointError, "does not fit backbone 'resnet_tiny'"


def bad_pretrain_backbone(tmp_path):
    init = {"label": "ssl", "pretrain": {**TINY_PRETRAIN, "backbone": {"name": "resnet18"}}}
    return {"inits": ["random", init]}, ConfigError, "pre-training uses backbone resnet18"


def bad_pretrain_data(tmp_path):
    init = {"label": "ssl", "pretrain": {**TINY_PRETRAIN, "data": {"name": "pneumoniamnist", "root": str(tmp_path)}}}
    return {"inits": ["random", init]}, DataError, "not found"


def bad_pretrain_options(tmp_path):
    init = {"label": "ssl", "pretrain": {**TINY_PRETRAIN, "method_options": {"temprature": 0.1}}}
    return {"inits": ["random", init]}, ConfigError, "temprature"


def bad_pretrain_channels(tmp_path):
    # 2-channel pre-training data, RGB fine-tuning data: no adaptation exists; known before pre-training
    pretrain = {**TINY_PRETRAIN, "data": {**TINY_PRETRAIN["data"], "channels": 2}}
    changes = {"datasets": [{**DATA, "channels": 3}], "inits": ["random", {"label": "ssl", "pretrain": pretrain}]}
    return changes, CheckpointError, r"inits \(ssl\): pre-training on synthetic2d: cannot adapt conv1\.weight from 2"


def bad_view(tmp_path):
    return {"backbone": {"name": "resnet_tiny", "view": "layers"}}, ConfigError, "'layers' is not a view"


def bad_checkpoint_stem_mismatch(tmp_path):
    path = save_backbone(create_backbone("resnet_tiny", 3, 16), tmp_path / "rgb.safetensors")
    # an RGB checkpoint adapts to 1-channel data; one with another stem kernel cannot, and says why
    small = save_backbone(create_backbone("resnet_tiny", 3, 16, small_stem=True), tmp_path / "small.safetensors")
    return {"inits": [{"checkpoint": str(path)}, {"checkpoint": str(small)}]}, CheckpointError, "conv1.weight"


@pytest.mark.parametrize("make_bad", [bad_dataset_missing, bad_dataset_nan, bad_checkpoint_missing,
                                      bad_checkpoint_other_backbone, bad_pretrain_backbone, bad_pretrain_data,
                                      bad_pretrain_options, bad_pretrain_channels, bad_view,
                                      bad_checkpoint_stem_mismatch])
def test_bad_input_fails_before_training_and_keeps_results(tmp_path, finished, fake, no_pretrain, make_bad):
    changes, error, message = make_bad(tmp_path)
    before = snapshot(finished)
    with pytest.raises(error, match=message):
        run_experiment(experiment(**changes), finished, progress=False)
    assert fake.calls == [] and no_pretrain == []
    assert snapshot(finished) == before
    assert not (finished / "pretrain").exists()


def test_bad_input_creates_no_folder(tmp_path, fake, no_pretrain):
    changes, error, _ = bad_checkpoint_missing(tmp_path)
    with pytest.raises(error):
        run_experiment(experiment(**changes), tmp_path / "new", progress=False)
    assert not (tmp_path / "new").exists()


def test_medmnist_layout_file_runs(tmp_path, fake):
    """The control for the NaN case: the same file without the NaN is accepted and fine-tuned."""
    write_medmnist(tmp_path / "ok", nan_label=False)
    cfg = experiment(datasets=[{"name": "pneumoniamnist", "root": str(tmp_path / "ok"), "verify": False}],
                     strategies=["linear"], label_fractions=[1.0])
    summary = run_experiment(cfg, tmp_path / "exp", progress=False)
    assert summary.done == 1 and fake.labels() == [("linear", 20)]
    assert fake.calls[0]["backbone"].in_chans == 1


def test_checkpoint_init_is_loaded_and_keyed_by_content(tmp_path, fake):
    path = save_backbone(create_backbone("resnet_tiny", 1, 16), tmp_path / "ckpt" / "mine.safetensors")
    cfg = experiment(inits=[{"checkpoint": str(path)}], strategies=["linear"], label_fractions=[1.0])
    run_experiment(cfg, tmp_path / "exp", progress=False)
    (row,) = rows(tmp_path / "exp").to_dict("records")
    assert row["init"] == "mine" and row["extra"]["init_file"] == str(path)
    assert row["config"]["init"] == {"kind": "checkpoint", "sha256": sha256_file(path),
                                     "normalisation": DEFAULT.to_dict()}  # none recorded: 0.5 / 0.5
    # the weights reached the backbone handed to fine_tune
    saved, loaded = read_weights(path), fake.calls[0]["backbone"].model.state_dict()
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)

    # a different file under the same name is a different init: its run is not skipped
    old_sha, other = sha256_file(path), create_backbone("resnet_tiny", 1, 16)
    with torch.no_grad():
        next(other.model.parameters()).add_(1.0)
    save_backbone(other, path)
    assert sha256_file(path) != old_sha
    fake.calls.clear()
    summary = run_experiment(cfg, tmp_path / "exp", progress=False)
    assert (summary.skipped, summary.done) == (0, 1) and len(fake.calls) == 1


# --- real training -------------------------------------------------------------------------------------------------

def test_end_to_end_with_inline_simclr_pretraining(tmp_path, monkeypatch):
    folder = tmp_path / "exp"
    init = {"label": "simclr", "pretrain": TINY_PRETRAIN}
    cfg = experiment(inits=["random", init], strategies=["end_to_end"], label_fractions=[0.5])
    summary = run_experiment(cfg, folder, progress=False)
    assert (summary.total, summary.done, summary.failed) == (2, 2, [])

    (checkpoint,) = (folder / "pretrain").glob("simclr-synthetic2d-*/backbone.safetensors")
    sha = sha256_file(checkpoint)
    data = load_dataset("synthetic2d", **{k: v for k, v in DATA.items() if k != "name"})
    table = rows(folder)
    assert list(table["init"]) == ["random", "simclr"]
    for row in table.to_dict("records"):
        assert set(row["metrics"]) >= {"auc", "acc"} and 0 <= row["metrics"]["auc"] <= 1
        assert len(row["per_class"]["auc"]) == 3
        assert row["timings"]["fit_s"] > 0 and row["timings"]["test_s"] > 0
        assert row["extra"]["n_train"] == len(label_fraction_indices(data.train.labels, data.task, 0.5, 0))
        assert row["extra"]["epochs_run"] == 1
        assert (folder / "runs" / row["run_id"][:16] / "metrics.csv").exists()  # Lightning really trained
        assert not (folder / "runs" / row["run_id"][:16] / "checkpoints").exists()  # keep_checkpoints: false
        with np.load(folder / "runs" / row["run_id"][:16] / "test_predictions.npz") as npz:
            np.testing.assert_array_equal(npz["index"], np.arange(60))
            np.testing.assert_array_equal(npz["y_true"], data.test.labels)
            assert npz["scores"].shape == (60, 3)
            np.testing.assert_allclose(npz["scores"].sum(axis=1), 1, atol=1e-5)
    ssl = table[table["init"] == "simclr"].iloc[0]
    assert ssl["config"]["init"] == {"kind": "checkpoint", "sha256": sha, "normalisation": DEFAULT.to_dict()}
    assert ssl["extra"]["init_file"] == str(checkpoint)

    # A second invocation with one more seed reuses the pre-training: no new fit, same checkpoint, same init hash.
    saves = []
    real_save = pretrain_run.save_backbone
    monkeypatch.setattr(pretrain_run, "save_backbone", lambda *a, **k: saves.append(a) or real_save(*a, **k))
    fake = FakeFineTune()
    monkeypatch.setattr(runner, "fine_tune", fake)
    summary = run_experiment(experiment(inits=["random", init], strategies=["end_to_end"], label_fractions=[0.5],
                                        seeds=[0, 1]), folder, progress=False)
    assert (summary.total, summary.skipped, summary.done) == (4, 2, 2)
    assert saves == [] and sha256_file(checkpoint) == sha
    assert [c["seed"] for c in fake.calls] == [1, 1]
    new = rows(folder)
    assert list(new[new["init"] == "simclr"]["config"].map(lambda c: c["init"]["sha256"])) == [sha, sha]


def test_same_run_twice_gives_identical_results(tmp_path):
    cfg = experiment(strategies=["end_to_end"], label_fractions=[1.0])
    for name in ("a", "b"):
        run_experiment(cfg, tmp_path / name, progress=False)
    (a,), (b,) = (rows(tmp_path / name).to_dict("records") for name in ("a", "b"))
    assert a["run_id"] == b["run_id"]
    assert (tmp_path / "a" / "runs" / a["run_id"][:16] / "metrics.csv").exists()  # trained, not faked
    assert a["metrics"] == b["metrics"] and a["val_metrics"] == b["val_metrics"]
    assert a["per_class"] == b["per_class"] and a["extra"]["best_epoch"] == b["extra"]["best_epoch"]
    run_dir = Path("runs") / a["run_id"][:16] / "test_predictions.npz"
    with np.load(tmp_path / "a" / run_dir) as pa, np.load(tmp_path / "b" / run_dir) as pb:
        np.testing.assert_array_equal(pa["scores"], pb["scores"])


def test_a_pretraining_init_is_checked_once_and_run_from_the_same_plan(tmp_path, fake, monkeypatch):
    """``prepare`` checks the pre-training (options, init, data, method support) and ``run_pretrainings`` runs that
    very plan: its dataset is not loaded or checked a second time."""
    checks, runs = [], []
    check, run = runner.PretrainPlan.check, runner.PretrainPlan.run
    monkeypatch.setattr(runner.PretrainPlan, "check", lambda plan: checks.append(plan) or check(plan))
    monkeypatch.setattr(runner.PretrainPlan, "run", lambda plan, *a, **k: runs.append(plan) or run(plan, *a, **k))
    cfg = experiment(inits=["random", {"label": "ssl", "pretrain": TINY_PRETRAIN}], strategies=["linear"],
                     label_fractions=[1.0])
    assert run_experiment(cfg, tmp_path / "exp", progress=False).done == 2
    assert len(checks) == 1 and runs == checks


def test_a_pretraining_runs_with_cpus_per_run_threads_as_a_ray_task_does(tmp_path, fake, monkeypatch):
    import torch

    threads, run = [], runner.PretrainPlan.run
    monkeypatch.setattr(runner.PretrainPlan, "run",
                        lambda plan, *a, **k: threads.append(torch.get_num_threads()) or run(plan, *a, **k))
    before = torch.get_num_threads()  # + 1: never the count the process runs with anyway
    cfg = experiment(inits=["random", {"label": "ssl", "pretrain": TINY_PRETRAIN}], strategies=["linear"],
                     label_fractions=[1.0], hardware={"accelerator": "cpu", "cpus_per_run": before + 1})
    assert run_experiment(cfg, tmp_path / "exp", progress=False).done == 2
    assert threads == [before + 1] and torch.get_num_threads() == before


def test_a_method_that_cannot_pretrain_the_backbone_names_the_init(tmp_path, fake):
    init = {"label": "ssl", "pretrain": {**TINY_PRETRAIN, "method": "mae"}}  # MAE needs a ViT
    with pytest.raises(ConfigError, match=r"inits \(ssl\): method: 'mae' needs a vit backbone.*allowed methods"):
        run_experiment(experiment(inits=["random", init]), tmp_path / "exp", progress=False)
    assert fake.calls == []
