"""Every 2D timm family on a reduced configuration (random weights, 32-64 px): depth units, truncation, freezing,
U-Net decoding, input channels and which SSL methods serve it."""

import pytest
import timm
import torch

from medtransfer.cli import main
from medtransfer.errors import ConfigError
from medtransfer.finetune.strategies import parse_strategy
from medtransfer.models.checkpoint import load_backbone_weights
from medtransfer.models.depth import DepthRange
from medtransfer.models.factory import create_backbone
from medtransfer.models.heads import Classifier
from medtransfer.models.segmentation import SegmentationModel
from medtransfer.models.timm_stages import TimmStagesBackbone
from medtransfer.pretrain import METHODS

FAMILIES = ["densenet_tiny", "convnext_micro", "efficientnet_tiny", "regnet_tiny", "swin_micro"]
TODAY = ["resnet_tiny", "vit_micro"]
SIZE = 32


pytestmark = pytest.mark.usefixtures("one_thread")


def build(name, in_chans=1, size=SIZE):
    torch.manual_seed(0)
    return create_backbone(name, in_chans, size)


def state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def one_step(model, x, target_fn):
    """One AdamW step on the trainable parameters (lr large enough that a trained tensor surely moves)."""
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = target_fn(model(x))
    loss.backward()
    opt.step()
    return loss


@pytest.mark.parametrize("name", FAMILIES + TODAY)
def test_units_cover_every_parameter_exactly_once(name):
    backbone = build(name)
    names = [n for n, _ in backbone.model.named_parameters()]
    for view in backbone.views:
        units = backbone.unit_parameter_names(view)
        flat = [n for unit in units for n in unit]
        assert sorted(flat) == sorted(names) and len(flat) == len(set(flat)), view
        assert all(unit for unit in units), f"{view}: a unit without parameters"


@pytest.mark.parametrize("name", FAMILIES)
def test_stage_view_is_four_stages_at_strides_4_to_32_so_quarters_are_stages(name):
    backbone = build(name)
    stages = backbone.view("stage")
    assert len(stages) == 4
    strides = [SIZE // backbone.step_shapes[group[-1]][1][1] for group in stages]
    assert strides == [4, 8, 16, 32]
    for q in range(4):
        assert DepthRange.parse(f"q{q + 1}").select(len(stages)) == [q]
    # the block view has one unit per repeated block, and more of them than stages
    assert len(backbone.view("block")) > 4


@pytest.mark.parametrize("name", FAMILIES)
def test_steps_reproduce_the_networks_own_pooled_features_and_maps(name):
    backbone = build(name, 3).eval()
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), backbone.model(x), rtol=1e-5, atol=1e-6)
        maps = backbone.feature_maps(x)
    assert [(m.shape[1], tuple(m.shape[2:])) for m in maps] == backbone.map_shapes


@pytest.mark.parametrize("name", FAMILIES)
def test_truncation_at_each_stage_boundary_gives_a_working_classifier(name):
    for units_kept in range(1, 5):
        backbone = build(name)
        last_step = backbone.view("stage")[units_kept - 1][-1]
        channels = backbone.step_channels[last_step]
        backbone.truncate(last_step + 1)
        assert backbone.num_features == channels
        kept = {n for unit in backbone.unit_parameter_names("stage") for n in unit}
        assert kept == {n for n, _ in backbone.model.named_parameters()}  # dropped units own nothing any more
        model = Classifier(backbone, 3)
        logits = model(torch.rand(2, 1, SIZE, SIZE))
        assert logits.shape == (2, 3) and torch.isfinite(logits).all()
        logits.sum().backward()


@pytest.mark.parametrize("name", FAMILIES)
def test_a_frozen_unit_is_bit_identical_after_training_and_the_trained_unit_moves(name):
    backbone = build(name)
    parse_strategy("q2").prepare(backbone, "stage")
    before = state(backbone.model)
    model = Classifier(backbone, 2)
    one_step(model, torch.rand(4, 1, SIZE, SIZE), lambda y: y.square().mean())
    after = state(backbone.model)
    units = backbone.unit_parameter_names("stage")
    for i, unit in enumerate(units):
        modules = {n.rsplit(".", 1)[0] for n in unit}
        keys = [k for k in after if k.rsplit(".", 1)[0] in modules]  # weights and BN statistics of the unit
        moved = [k for k in keys if not torch.equal(before[k], after[k])]
        if i == 1:
            assert moved
        else:
            assert not moved, (i, moved[:3])


@pytest.mark.parametrize("name", FAMILIES)
def test_unet_on_it_trains_one_step(name):
    backbone = build(name)
    model = SegmentationModel(backbone, 2, "unet")
    x = torch.rand(2, 1, SIZE, SIZE)
    assert model(x).shape == (2, 2, SIZE, SIZE)
    before = state(model)
    loss = one_step(model, x, lambda y: torch.nn.functional.cross_entropy(y, torch.zeros(2, SIZE, SIZE).long()))
    assert torch.isfinite(loss)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items() if k.startswith("head."))


def test_fpn_reads_the_stage_maps():
    model = SegmentationModel(build("convnext_micro", size=64), 1, "fpn")
    assert model(torch.rand(1, 1, 64, 64)).shape == (1, 1, 64, 64)


@pytest.mark.parametrize("name", FAMILIES)
def test_first_conv_adapts_to_one_and_three_channels(name):
    rgb = build(name, 3)
    assert rgb.model.state_dict()[rgb.first_conv].shape[1] == 3
    grey = build(name, 1)
    assert grey.model.state_dict()[grey.first_conv].shape[1] == 1
    report = load_backbone_weights(grey, rgb.model.state_dict(), "rgb weights")
    assert report["adapted"] == [f"{grey.first_conv}: 3 -> 1 input channels"]
    torch.testing.assert_close(grey.model.state_dict()[grey.first_conv],
                               rgb.model.state_dict()[rgb.first_conv].sum(dim=1, keepdim=True))


@pytest.mark.parametrize("name, method", [("swin_micro", "simclr"), ("densenet_tiny", "rotation"),
                                          ("convnext_micro", "models_genesis"), ("convnext_micro", "jigsaw"),
                                          ("efficientnet_tiny", "spark"),
                                          ("regnet_tiny", "spark")])
def test_ssl_methods_train_on_the_families_they_serve(name, method):
    backbone = build(name, size=64)
    cls = METHODS[method]
    assert cls.unsupported(backbone) is None
    ssl = cls(backbone, cls.Options(), views={})
    loss = ssl.ssl_loss(torch.rand(4, 1, 64, 64))
    assert torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in backbone.parameters())


@pytest.mark.parametrize("name, method, reason", [("swin_micro", "spark", "use method 'mae'"),
                                                  ("vit_micro", "spark", "use method 'mae'"),
                                                  ("swin_micro", "models_genesis", "needs a resnet or unet_encoder"),
                                                  ("densenet_tiny", "mae", "needs a vit backbone")])
def test_methods_refuse_families_they_cannot_serve_by_name(name, method, reason):
    assert reason in METHODS[method].unsupported(build(name))


def test_a_network_whose_forward_is_not_its_stages_in_order_is_refused_by_name():
    model = timm.create_model("convnext_atto", depths=(1, 1, 1, 1), dims=(8, 8, 8, 8), num_classes=0)
    model.forward_features = lambda x: type(model).forward_features(model, x).exp()  # more than its stages
    with pytest.raises(ConfigError, match="'odd' does not run as a sequence"):
        TimmStagesBackbone("odd", model, 2, 3, (SIZE, SIZE), False)


def test_describe_prints_units_with_depth_and_shares(capsys):
    assert main(["describe", "densenet_tiny", "--input-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "view 'stage' (default)" in out and "view 'block'" in out
    assert "features.denselayer" not in out and "features.denseblock4.denselayer2" in out
    assert "75%-100%" in out and "%" in out.splitlines()[-1]


def test_weights_of_a_classifier_at_another_input_size_load_through_timms_filter():
    """A timm Swin saved at 64 px (other attention windows) with its classifier loads into a 32 px, 1-channel one."""
    source = timm.create_model("swin_tiny_patch4_window7_224", img_size=64, embed_dim=8, depths=(1, 1, 2, 1),
                               num_heads=(1, 1, 1, 1), window_size=2, num_classes=4)
    target = build("swin_micro")
    report = load_backbone_weights(target, source.state_dict(), "swin at 64 px")
    assert report["ignored"] == ["head.fc.bias", "head.fc.weight"]
    torch.testing.assert_close(target.model.state_dict()["layers.2.blocks.1.mlp.fc1.weight"],
                               source.state_dict()["layers.2.blocks.1.mlp.fc1.weight"])
