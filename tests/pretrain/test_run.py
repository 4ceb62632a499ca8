"""pretrain(): resume (continue the same run) vs init (start a new one), the online probe, windowed views."""

import pickle

import lightning as L
import pandas as pd
import pytest
import torch

from medtransfer.config import PretrainConfig
from medtransfer.config_files import validate_config
from medtransfer.data.transforms import IntensityWindow, MedicalViews
from medtransfer.errors import CheckpointError, ConfigError
from medtransfer.models.checkpoint import read_metadata
from medtransfer.models.factory import create_backbone
from medtransfer.pretrain import METHODS
from medtransfer.pretrain.run import pretrain
from medtransfer.pretrain.simclr import SimCLR

TINY = {"name": "synthetic2d", "n_train": 64, "n_val": 32, "n_test": 16, "size": 16}


def config(**changes):
    return validate_config({"method": "simclr", "data": TINY, "backbone": {"name": "resnet_tiny"}, "epochs": 3,
                            "batch_size": 32, **changes}, PretrainConfig)


class CrashAfterEpoch1(SimCLR):
    def on_epoch(self, epoch, total_epochs):
        if epoch == 2:
            raise RuntimeError("simulated crash")


class Recording(SimCLR):
    """Records the step and epoch the driver passes to the method's hooks."""
    calls: list[tuple[str, int, int]] = []

    def on_epoch(self, epoch, total_epochs):
        self.calls.append(("epoch", epoch, total_epochs))

    def after_step(self, step, total_steps):
        self.calls.append(("step", step, total_steps))


def test_resume_continues_an_interrupted_run_from_its_last_epoch(tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, "simclr", CrashAfterEpoch1)
    with pytest.raises(RuntimeError, match="simulated crash"):
        pretrain(config(), tmp_path, resume=False)
    assert (tmp_path / "lightning" / "last.ckpt").exists() and not (tmp_path / "backbone.safetensors").exists()
    monkeypatch.setitem(METHODS, "simclr", Recording)
    path = pretrain(config(), tmp_path, resume=True)
    # the schedules continue where they stopped: epoch 2 of 3, steps 4-5 of 6 (64 images, batches of 32)
    assert Recording.calls == [("epoch", 2, 3), ("step", 4, 6), ("step", 5, 6)]
    log = pd.read_csv(tmp_path / "metrics.csv").dropna(subset=["pretrain/loss"])
    assert sorted(log["epoch"]) == [0, 1, 2]  # epochs 0-1 before the crash, only epoch 2 after it
    assert read_metadata(path)["epochs"] == 3
    assert not (tmp_path / "lightning").exists()  # resume state removed once finished


def test_resume_refuses_a_changed_config_or_nothing_to_resume(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="no interrupted pre-training"):
        pretrain(config(), tmp_path, resume=True)
    monkeypatch.setitem(METHODS, "simclr", CrashAfterEpoch1)
    with pytest.raises(RuntimeError):
        pretrain(config(), tmp_path, resume=False)
    monkeypatch.setitem(METHODS, "simclr", SimCLR)
    with pytest.raises(ConfigError, match="config differs"):
        pretrain(config(lr=0.5), tmp_path, resume=True)


def test_online_probe_reports_validation_auc_every_epoch_without_touching_the_ssl_loss(tmp_path):
    pretrain(config(online_probe=True, epochs=2), tmp_path / "probe")
    log = pd.read_csv(tmp_path / "probe" / "metrics.csv")
    auc = log["probe/val_auc"].dropna()
    assert len(auc) == 2 and auc.between(0, 1).all()
    # the probe only watches: the same config without it is the same pre-training (same hash, same backbone)
    plain = pretrain(config(epochs=2), tmp_path / "plain")
    assert read_metadata(plain)["config_hash"] == read_metadata(tmp_path / "probe" / "backbone.safetensors")["config_hash"]


def test_windowing_maps_the_window_to_the_unit_range():
    window = IntensityWindow(51, 204)  # stored uint8 units: 0.2-0.8 in [0, 1]
    x = torch.tensor([0.0, 0.2, 0.5, 0.8, 1.0]).reshape(5, 1, 1, 1)
    assert torch.allclose(window(x).flatten(), torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))
    views = MedicalViews(2, 1, (16, 16), window=(51, 204), window_jitter=0.1)
    assert isinstance(views.ops[0], IntensityWindow)
    L.seed_everything(0, verbose=False)
    out = views(torch.rand(4, 1, 16, 16))
    assert out.shape == (4, 1, 16, 16) and out.min() >= 0 and out.max() <= 1


def test_continual_pretraining_starts_from_a_timm_weights_file(tmp_path):
    """timm caches ImageNet weights as a plain model.safetensors with native keys and a 1000-class head: such a file
    is a valid init (head dropped, RGB stem summed to grayscale) and the chain records it."""
    import timm
    from safetensors.torch import save_file

    source = timm.create_model("resnet18", pretrained=False)  # the layout of timm's cached ImageNet file
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, str(tmp_path / "model.safetensors"))
    cfg = config(backbone={"name": "resnet18"}, epochs=1, init=str(tmp_path / "model.safetensors"))
    path = pretrain(cfg, tmp_path / "out")
    chain = read_metadata(path)["init_chain"]
    assert chain[0]["checkpoint"].endswith("model.safetensors")
    assert chain[0]["adapted"] == ["conv1.weight: 3 -> 1 input channels"]


def _unlabelled(n=8):
    import numpy as np

    from medtransfer.data.base import ImageDataset, Split
    empty = Split(np.zeros((0, 1, 16, 16), np.uint8), np.zeros(0, np.int64))
    images = np.random.default_rng(0).integers(0, 255, (n, 1, 16, 16), dtype=np.uint8)
    return ImageDataset("folder", "unlabelled", ("image",), 2, Split(images, np.zeros(n, np.int64)), empty,
                        empty).validate()


@pytest.mark.parametrize("changes, match", [({"method": "supervised"}, "trains on labels"),
                                            ({"online_probe": True}, "online_probe")])
def test_label_dependent_parts_are_refused_on_unlabelled_images_before_training(changes, match, tmp_path,
                                                                                  monkeypatch):
    from medtransfer.pretrain import run
    monkeypatch.setattr(run, "load_dataset", lambda *a, **k: _unlabelled())
    with pytest.raises(ConfigError, match=match):
        pretrain(config(**changes), tmp_path)
    assert not any(tmp_path.iterdir())  # nothing trained, nothing written


class PlantedCode:
    """What an attacker would plant: unpickling it calls os.mkdir(marker) (any code could run instead)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os
        return os.mkdir, (self.marker,)


@pytest.mark.parametrize("resume", [True, "auto"])
def test_a_planted_resume_state_is_refused_without_running_its_code(tmp_path, resume):
    from medtransfer.bench.store import config_hash
    from medtransfer.pretrain.run import resolved_pretrain_config

    cfg, marker = config(), tmp_path / "marker"
    (tmp_path / "out" / "lightning").mkdir(parents=True)
    (tmp_path / "out" / "lightning" / "config_hash").write_text(config_hash(resolved_pretrain_config(cfg)))
    torch.save({"state_dict": {}, "epoch": 1, "loops": PlantedCode(marker)}, tmp_path / "out/lightning/last.ckpt")
    refused = r"last\.ckpt: refused as resume state.*it pickles posix\.mkdir.*delete .*lightning"
    with pytest.raises(CheckpointError, match=refused):
        pretrain(cfg, tmp_path / "out", resume=resume)
    assert not marker.exists()
    assert not (tmp_path / "out" / "backbone.safetensors").exists()


def test_the_cli_refuses_a_planted_resume_state_in_one_line_and_no_resume_starts_over(tmp_path, capsys):
    import yaml

    from medtransfer.bench.store import config_hash
    from medtransfer.cli import main
    from medtransfer.pretrain.run import resolved_pretrain_config

    cfg, marker, out = config(epochs=1), tmp_path / "marker", tmp_path / "out"
    (tmp_path / "pre.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude={"output"})))
    (out / "lightning").mkdir(parents=True)
    (out / "lightning" / "config_hash").write_text(config_hash(resolved_pretrain_config(cfg)))
    with open(out / "lightning" / "last.ckpt", "wb") as f:  # a plain pickle, not torch's zip format
        pickle.dump({"epoch": PlantedCode(marker)}, f)
    assert main(["pretrain", str(tmp_path / "pre.yaml"), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "refused as resume state" in err[0], err
    assert not marker.exists()
    assert main(["pretrain", str(tmp_path / "pre.yaml"), "--output", str(out), "--no-resume"]) == 0
    assert (out / "backbone.safetensors").exists() and not marker.exists()


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_resume_state_is_readable_without_unpickling_code(name, tmp_path, monkeypatch):
    """A genuine resume state must pass the weights_only=True check that refuses planted ones: a method that put,
    say, a config object into its checkpoint would otherwise have its own resume refused."""
    from medtransfer.finetune.resume import check_loadable
    from medtransfer.pretrain import run

    def stop(*args, **kwargs):
        raise RuntimeError("stopped after the epoch's checkpoint")

    monkeypatch.setattr(run, "save_backbone", stop)  # keeps lightning/last.ckpt, as an interrupted run does
    backbone = "vit_micro" if METHODS[name].unsupported(create_backbone("resnet_tiny", 1, (16, 16))) else "resnet_tiny"
    cfg = config(method=name, epochs=1, backbone={"name": backbone}, data={**TINY, "n_train": 32},
                 batch_size=16, online_probe=True)  # the probe's head is resume state too
    with pytest.raises(RuntimeError, match="stopped"):
        pretrain(cfg, tmp_path, resume=False)
    check_loadable(tmp_path / "lightning" / "last.ckpt", start_over="")


def test_nearest_resizing_is_refused_for_pre_training_whose_views_resize_linearly(tmp_path):
    with pytest.raises(ConfigError, match="data.resize_mode: 'nearest'"):
        pretrain(config(data={**TINY, "resize": 32, "resize_mode": "nearest"}), tmp_path)
    assert not any(tmp_path.iterdir())
