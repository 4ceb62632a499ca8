"""A pre-training's saved backbone is the one its config hash stands for: a resumed run and a run with the online
probe save exactly the backbone of the uninterrupted, probe-off run; checkpoints perturbed by the old probe are
trained again."""

import json

import pytest
import torch
from safetensors.torch import load_file

from medtransfer.config import PretrainConfig
from medtransfer.config_files import validate_config
from medtransfer.errors import ConfigError
from medtransfer.models.checkpoint import read_metadata
from medtransfer.pretrain.module import PretrainModule
from medtransfer.pretrain.run import PretrainPlan, pretrain

TINY = {"name": "synthetic2d", "n_train": 32, "n_val": 16, "n_test": 8, "size": 16}
SMALL_OPTIONS = {
    "simclr": {},
    "moco_v2": {"queue_size": 32, "hidden_dim": 32, "output_dim": 16},  # the memory bank is resume state
    "dino": {"output_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16},  # the centre is resume state
    "multi_ssl": {"methods": [{"name": "moco_v2", "options": {"queue_size": 32}}, {"name": "rotation"}]},
}


def config(method="simclr", **changes):
    return validate_config({"method": method, "data": TINY, "backbone": {"name": "resnet_tiny"}, "epochs": 2,
                            "batch_size": 16, "method_options": SMALL_OPTIONS[method], **changes}, PretrainConfig)


def assert_identical(path_a, path_b):
    a, b = load_file(str(path_a)), load_file(str(path_b))
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]  # weights, BN running stats, num_batches_tracked
    assert not different, different


def crash_at_epoch_1(monkeypatch):
    original = PretrainModule.on_train_epoch_start

    def crash(self):
        if self.current_epoch == 1:
            raise RuntimeError("simulated kill")
        original(self)

    monkeypatch.setattr(PretrainModule, "on_train_epoch_start", crash)
    return original


@pytest.mark.parametrize("method", sorted(SMALL_OPTIONS))
def test_a_resumed_pretraining_saves_the_backbone_of_the_uninterrupted_run(method, tmp_path, monkeypatch):
    uninterrupted = pretrain(config(method), tmp_path / "whole")
    original = crash_at_epoch_1(monkeypatch)
    with pytest.raises(RuntimeError, match="simulated kill"):
        pretrain(config(method), tmp_path / "resumed")
    monkeypatch.setattr(PretrainModule, "on_train_epoch_start", original)
    resumed = pretrain(config(method), tmp_path / "resumed", resume=True)
    assert_identical(uninterrupted, resumed)
    assert read_metadata(resumed)["resumed_from_epochs"] == [1]
    assert read_metadata(uninterrupted)["resumed_from_epochs"] == []


def test_the_moco_memory_bank_travels_in_the_checkpoint():
    plan = PretrainPlan(config("moco_v2")).check()
    saved, fresh = plan._module(plan.backbone()), plan._module(plan.backbone())
    bank = saved.method.criterion.memory_bank
    bank.bank.normal_()
    bank.bank_ptr.fill_(5)
    checkpoint = {}
    saved.on_save_checkpoint(checkpoint)
    fresh.on_load_checkpoint(checkpoint)
    assert torch.equal(fresh.method.criterion.memory_bank.bank, bank.bank)
    assert int(fresh.method.criterion.memory_bank.bank_ptr) == 5


def test_a_resume_state_without_random_states_is_not_continued(tmp_path, monkeypatch):
    original = crash_at_epoch_1(monkeypatch)
    with pytest.raises(RuntimeError):
        pretrain(config(), tmp_path)
    monkeypatch.setattr(PretrainModule, "on_train_epoch_start", original)
    last = tmp_path / "lightning" / "last.ckpt"
    state = torch.load(last, weights_only=True)
    del state["callbacks"]["RandomStates"]  # as written before resumes restored random states
    torch.save(state, last)
    with pytest.raises(ConfigError, match="without the random states.*--no-resume"):
        pretrain(config(), tmp_path, resume=True)
    path = pretrain(config(), tmp_path, resume="auto")  # starts over
    assert read_metadata(path)["resumed_from_epochs"] == []


def test_the_online_probe_leaves_the_saved_backbone_bit_identical(tmp_path):
    plain = pretrain(config(), tmp_path / "plain")
    probed = pretrain(config(online_probe=True), tmp_path / "probe")
    assert_identical(plain, probed)
    assert read_metadata(probed)["online_probe"] is True  # and it ran: a validation score per epoch
    assert (tmp_path / "probe" / "metrics.csv").read_text().splitlines()[0].count("probe/val_auc") == 1


def test_a_checkpoint_the_old_probe_perturbed_is_trained_again_and_a_probe_off_one_is_reused(tmp_path):
    cfg = config(online_probe=True, epochs=1)
    first = pretrain(cfg, tmp_path / "probe")
    plain = pretrain(config(epochs=1), tmp_path / "plain")
    for path in (first, plain):  # as written before the fix: no marker
        meta = read_metadata(path)
        del meta["probe_isolated"]
        path.with_suffix(".json").write_text(json.dumps(meta))
    assert PretrainPlan(config(epochs=1)).finished(tmp_path / "plain") == plain  # probe off: still reused
    assert PretrainPlan(cfg).finished(tmp_path / "probe") is None
    again = pretrain(cfg, tmp_path / "probe")
    assert read_metadata(again)["probe_isolated"] is True
    assert_identical(again, plain)
