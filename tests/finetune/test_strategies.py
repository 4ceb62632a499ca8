"""Each strategy's definition, checked on real training: frozen = bit-identical weights *and* BatchNorm buffers,
no optimizer state; trainable = moved."""

import numpy as np
import pytest
import torch

from medtransfer.errors import ConfigError
from medtransfer.finetune.module import FineTuner
from medtransfer.finetune.strategies import STRATEGIES, parse_strategy
from medtransfer.finetune.train import fine_tune
from medtransfer.data.transforms import Preprocess
from medtransfer.models.heads import Classifier


def snapshot(backbone):
    return {k: v.detach().clone() for k, v in backbone.model.state_dict().items()}


def changed(before, backbone, prefix):
    """Did any tensor (parameter or buffer) under ``prefix`` change?"""
    after = backbone.model.state_dict()
    keys = [k for k in before if k == prefix or k.startswith(prefix + ".")]
    assert keys, prefix
    return any(not torch.equal(before[k], after[k]) for k in keys)


def train(tiny2d, backbone, strategy, train_cfg, cpu, tmp_path, view="stage"):
    everything = np.arange(len(tiny2d.train))
    return fine_tune(tiny2d, everything, backbone, parse_strategy(strategy), view, train_cfg, cpu, 0, tmp_path)


STAGES = {0: ["conv1", "bn1", "layer1"], 1: ["layer2"], 2: ["layer3"], 3: ["layer4"]}


@pytest.mark.parametrize("strategy, trained_units", [
    ("end_to_end", [0, 1, 2, 3]),
    ("linear", []),
    ("q2", [1]),
    ({"name": "range", "range": "0.5-1"}, [2, 3]),
])
def test_frozen_units_are_bit_identical_and_trained_units_move(tiny2d, make_backbone, fast_train, cpu, tmp_path,
                                                                strategy, trained_units):
    backbone = make_backbone()
    before = snapshot(backbone)
    result = train(tiny2d, backbone, strategy, fast_train, cpu, tmp_path)
    for unit, prefixes in STAGES.items():
        for prefix in prefixes:
            assert changed(before, backbone, prefix) == (unit in trained_units), (strategy, prefix)
    assert "auc" in result.metrics


def test_truncate_drops_units_and_trains_only_the_train_range(tiny2d, make_backbone, fast_train, cpu, tmp_path):
    backbone = make_backbone()
    before = snapshot(backbone)
    result = train(tiny2d, backbone, {"name": "truncate", "keep": "0-0.75", "train": "q2"}, fast_train, cpu, tmp_path)
    assert not any(k.startswith("layer4.0.") for k in backbone.model.state_dict())
    assert backbone.num_features == 64  # resnet_tiny layer3 width: the head sits on the last kept unit
    assert changed(before, backbone, "layer2")
    assert not changed(before, backbone, "layer1") and not changed(before, backbone, "layer3")
    assert result.total_params < sum(v.numel() for k, v in before.items() if "running" not in k)


def test_truncate_all_kept_units_train_by_default(make_backbone):
    backbone = make_backbone()
    parse_strategy({"name": "truncate", "keep": "0-0.5"}).prepare(backbone, "stage")
    assert [s.name for s in backbone.steps][-1] == "layer2.0"
    assert all(p.requires_grad for p in backbone.parameters())


def test_truncate_train_range_past_the_cut_is_rejected(make_backbone):
    with pytest.raises(ConfigError, match="reaches past"):
        parse_strategy({"name": "truncate", "keep": "0-0.5", "train": "q3"}).prepare(make_backbone(), "stage")


def test_optimizer_holds_exactly_the_trainable_parameters(tiny2d, make_backbone, fast_train):
    for spec in ["end_to_end", "linear", "q3", {"name": "truncate", "keep": "0-0.75"}, "lwlr_decay"]:
        backbone, strategy = make_backbone(), parse_strategy(spec)
        strategy.prepare(backbone, "stage")
        model = Classifier(backbone, tiny2d.num_classes)
        module = FineTuner(model, tiny2d.task, strategy, "stage", fast_train, Preprocess(2))
        optimizer = module.configure_optimizers()
        in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
        assert in_optimizer == {id(p) for p in model.parameters() if p.requires_grad}, spec


def fit_without_selection(tiny2d, backbone, spec, epochs):
    """Train with the strategy's callbacks but no best-checkpoint restore, to see the weights training left."""
    import lightning as L
    from medtransfer.config import TrainConfig
    from medtransfer.finetune.train import tensor_dataset
    from torch.utils.data import DataLoader

    strategy = parse_strategy(spec)
    strategy.prepare(backbone, "stage")
    cfg = TrainConfig(epochs=epochs, batch_size=16, lr=1e-2, schedule="none")
    module = FineTuner(Classifier(backbone, tiny2d.num_classes), tiny2d.task, strategy, "stage", cfg, Preprocess(2))
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", callbacks=strategy.callbacks(), logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, DataLoader(tensor_dataset(tiny2d.train), batch_size=16, shuffle=True))


def test_warmup_keeps_backbone_frozen_for_its_epochs_then_trains_it(tiny2d, make_backbone):
    warm = {"name": "warmup", "frozen_epochs": 2}
    frozen_throughout = make_backbone()
    before = snapshot(frozen_throughout)
    fit_without_selection(tiny2d, frozen_throughout, warm, epochs=2)  # never reaches the unfreeze epoch
    assert not changed(before, frozen_throughout, "layer1") and not changed(before, frozen_throughout, "bn1")

    unfrozen = make_backbone()
    before = snapshot(unfrozen)
    fit_without_selection(tiny2d, unfrozen, warm, epochs=3)
    assert changed(before, unfrozen, "layer1") and changed(before, unfrozen, "bn1")


def test_layerwise_decay_gives_geometric_rates_by_unit(tiny2d, make_backbone):
    backbone = make_backbone()
    model = Classifier(backbone, tiny2d.num_classes)
    groups = parse_strategy({"name": "lwlr_decay", "decay": 0.5}).param_groups(model, 1.0, "block")
    assert groups[0]["lr"] == 1.0 and groups[0]["params"] == list(model.head.parameters())
    assert [g["lr"] for g in groups[1:]] == [0.5 ** 4, 0.5 ** 3, 0.5 ** 2, 0.5]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_frozen_batchnorm_stays_in_eval_mode_through_train_calls(make_backbone, tiny2d):
    backbone = make_backbone()
    parse_strategy("q4").prepare(backbone, "stage")
    Classifier(backbone, tiny2d.num_classes).train()
    assert not backbone.model.bn1.training and not backbone.model.layer1[0].bn1.training
    assert backbone.model.layer4[0].bn1.training


@pytest.mark.parametrize("spec, message", [
    ("nonsense", "unknown strategy"),
    ({"name": "range", "range": "0.9-0.1"}, "not a depth range"),
    ({"name": "range"}, "range"),
    ({"name": "warmup", "frozen_epochs": 0}, "frozen_epochs"),
    ({"name": "linear", "lr": 3}, "lr"),
])
def test_bad_strategy_specs_name_the_problem(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_strategy(spec)


def test_every_registered_strategy_has_a_distinct_label():
    defaults = {"range": {"range": "q1"}}
    labels = [parse_strategy({"name": n, **defaults.get(n, {})}).label() for n in STRATEGIES]
    assert len(set(labels)) == len(labels)
