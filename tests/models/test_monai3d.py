"""MONAI's 3D encoders (Swin UNETR's SwinViT, SegResNet's down path) as backbones: MONAI's own outputs, units that
partition the parameters, exact quarters, truncation at every unit boundary, input channels, ``describe``, and their
own decoders (equal to MONAI's whole networks) beside the generic U-Net."""

import pytest
import torch
from monai.networks.nets import SegResNet, SwinUNETR

from medtransfer.cli import main
from medtransfer.errors import ConfigError
from medtransfer.finetune.strategies import parse_strategy
from medtransfer.models.backbones import owns
from medtransfer.models.depth import DepthRange, describe_units
from medtransfer.models.factory import BACKBONES, BackboneSpec, create_backbone
from medtransfer.models.heads import Classifier
from medtransfer.models.monai3d import SwinConfig, SwinViTBackbone
from medtransfer.models.segmentation import SegmentationModel

NAMES = ["swin_unetr_tiny", "swin_unetr_v2_tiny", "segresnet_tiny"]
STAGES = {"swin_unetr_tiny": [("patch_embed", "layers1"), ("layers2",), ("layers3",), ("layers4",)],
          "swin_unetr_v2_tiny": [("patch_embed", "layers1c", "layers1"), ("layers2c", "layers2"),
                                 ("layers3c", "layers3"), ("layers4c", "layers4")],
          "segresnet_tiny": [("convInit", "down_layers.0"), ("down_layers.1",), ("down_layers.2",),
                             ("down_layers.3",)]}


@pytest.fixture(autouse=True)
def v2_tiny(monkeypatch):
    """Swin UNETR v2 (a residual conv block before each stage) at the tiny test size, for these tests only."""
    monkeypatch.setitem(BACKBONES, "swin_unetr_v2_tiny", BackboneSpec(
        SwinConfig(12, (2, 2, 2, 2), (1, 2, 4, 8), 4, use_v2=True).build, SwinViTBackbone, 3, "v2 for tests"))


def params_under(backbone, prefixes):
    return {n for n, _ in backbone.model.named_parameters() if any(owns(p, n) for p in prefixes)}


@pytest.mark.parametrize("name", NAMES)
def test_pooled_features_and_maps_are_monais_own(name):
    backbone = create_backbone(name, 1, 32).eval()
    x = torch.randn(2, 1, 32, 32, 32)
    with torch.no_grad():
        maps, pooled = backbone.feature_maps(x), backbone(x)
        if name.startswith("swin"):  # SwinViT's five normalised hidden states, /2 .. /32
            native = backbone.model(x, normalize=True)
        else:  # SegResNet.encode with the backbone's weights under SegResNet's own names
            net = SegResNet(init_filters=8, blocks_down=(1, 1, 1, 1)).eval()
            missing, unexpected = net.load_state_dict(backbone.model.state_dict(), strict=False)
            assert not unexpected and all(k.startswith(("up_", "conv_final")) for k in missing)
            native = net.encode(x)[1]
            maps = maps[1:]  # convInit's map (also full resolution) comes first
    assert len(maps) == len(native)
    for ours, theirs in zip(maps, native):
        torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(pooled, native[-1].mean(dim=(2, 3, 4)))


@pytest.mark.parametrize("name", NAMES)
def test_units_cover_every_parameter_once_and_quarters_are_the_stages(name):
    backbone = create_backbone(name, 1, 32)
    everything = {n for n, _ in backbone.model.named_parameters()}
    for view in backbone.views:
        units = [params_under(backbone, prefixes) for prefixes in backbone.unit_prefixes(view)]
        assert sum(len(u) for u in units) == len(everything) and set().union(*units) == everything, view
    stages = [params_under(backbone, prefixes) for prefixes in backbone.unit_prefixes("stage")]
    assert stages == [params_under(backbone, prefixes) for prefixes in STAGES[name]]
    for q in range(4):  # aligned: quarter q is exactly stage q
        assert DepthRange.parse(f"q{q + 1}").select(4) == [q]
        fresh = create_backbone(name, 1, 32)
        parse_strategy(f"q{q + 1}").prepare(fresh, "stage")
        assert {n for n, p in fresh.model.named_parameters() if p.requires_grad} == stages[q]
    rows = describe_units(backbone, "stage")
    assert sum(r["params"] for r in rows) == sum(p.numel() for p in backbone.model.parameters())


def test_swin_block_view_has_one_unit_per_swin_block():
    backbone = create_backbone("swin_unetr_v2_tiny", 1, 32)  # 2-2-2-2 blocks
    assert len(backbone.view("stage")) == 4 and len(backbone.view("block")) == 8
    first, second, third = backbone.unit_prefixes("block")[:3]
    assert first == ("patch_embed", "pos_drop", "layers1c", "layers1.0.blocks.0")  # v2's conv block joins block 0
    assert second == ("layers1.0.blocks.1", "layers1.0.downsample")  # the patch merging joins the stage's last block
    assert third == ("layers2c", "layers2.0.blocks.0")
    for q in range(4):  # aligned: two blocks per quarter
        assert DepthRange.parse(f"q{q + 1}").select(8) == [2 * q, 2 * q + 1]


def test_segresnet_block_view_has_one_unit_per_resblock():
    backbone = create_backbone("segresnet", 1, 32)  # MONAI's default 1-2-2-4 blocks
    assert len(backbone.view("stage")) == 4 and len(backbone.view("block")) == 9
    first, second = backbone.unit_prefixes("block")[:2]
    assert first == ("convInit", "down_layers.0.0", "down_layers.0.1")
    assert second == ("down_layers.1.0", "down_layers.1.1")  # the stride-2 entry conv joins its stage's first block


@pytest.mark.parametrize("name, view, widths", [
    ("swin_unetr_tiny", "stage", [24, 48, 96, 192]),
    ("swin_unetr_tiny", "block", [12, 24, 24, 48, 48, 96, 96, 192]),  # a stage merges patches after its last block
    ("segresnet_tiny", "stage", [8, 16, 32, 64]),
])
def test_truncation_at_each_unit_boundary_gives_a_working_classifier(name, view, widths):
    for units, width in enumerate(widths, start=1):
        backbone = create_backbone(name, 1, 32)
        dropped = set().union(*[params_under(backbone, p) for p in backbone.unit_prefixes(view)[units:]])
        parse_strategy({"name": "truncate", "keep": f"0-{units / len(widths)}"}).prepare(backbone, view)
        assert backbone.num_features == width
        assert not dropped & {n for n, _ in backbone.model.named_parameters()}
        model = Classifier(backbone, num_outputs=3)
        logits = model(torch.randn(2, 1, 32, 32, 32))
        assert logits.shape == (2, 3)
        logits.sum().backward()
        assert all(p.grad is not None for p in backbone.parameters())


@pytest.mark.parametrize("in_chans", [1, 2])
@pytest.mark.parametrize("name, conv", [("swin_unetr_tiny", "patch_embed.proj.weight"),
                                        ("segresnet_tiny", "convInit.conv.weight")])
def test_in_chans(name, conv, in_chans):
    backbone = create_backbone(name, in_chans, (32, 32, 16))
    assert backbone.first_conv == conv and backbone.model.state_dict()[conv].shape[1] == in_chans
    with torch.no_grad():
        assert backbone(torch.randn(2, in_chans, 32, 32, 16)).shape == (2, backbone.num_features)


def test_small_stem_is_refused():
    with pytest.raises(ConfigError, match="small_stem"):
        create_backbone("swin_unetr_tiny", 1, 32, small_stem=True)


def test_describe_swin_unetr_prints_its_stage_units(capsys):
    assert main(["describe", "swin_unetr", "--in-chans", "1", "--input-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "swin_unetr: MONAI Swin UNETR encoder" in out and "input 1x32x32x32" in out
    stage, block = out.split("view 'block'")
    rows = [line.split() for line in stage.splitlines() if line.strip()[:1].isdigit()]
    assert [r[3:6] for r in rows] == [["patch_embed", "..", "layers1.1"], ["layers2.0", "..", "layers2.1"],
                                      ["layers3.0", "..", "layers3.1"], ["layers4.0", "..", "layers4.1"]]
    assert [r[1] for r in rows] == ["q1", "q2", "q3", "q4"]
    assert [int(r[-3]) for r in rows] == [96, 192, 384, 768]  # output channels: 48 features doubled per stage
    assert sum(float(r[-1].rstrip("%")) for r in rows) == pytest.approx(100, abs=0.3)
    assert len([line for line in block.splitlines() if line.strip()[:1].isdigit()]) == 8


# --- segmentation ----------------------------------------------------------------------------------------------------
SIZE = (64, 64, 32)  # Swin UNETR's decoder needs sizes divisible by 32 and more than one voxel at /32


def test_swin_unetr_decoder_is_monais_swin_unetr_around_the_backbone():
    torch.manual_seed(0)
    net = SwinUNETR(in_channels=2, out_channels=3, feature_size=12, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8),
                    window_size=4).eval()
    model = SegmentationModel(create_backbone("swin_unetr_tiny", 2, SIZE), 3, "swin_unetr").eval()
    state = net.state_dict()
    model.backbone.model.load_state_dict({k[len("swinViT."):]: v for k, v in state.items() if k.startswith("swinViT.")})
    model.head.load_state_dict({k: v for k, v in state.items() if not k.startswith("swinViT.")})
    x = torch.randn(1, 2, *SIZE)
    with torch.no_grad():
        torch.testing.assert_close(model(x), net(x))


def test_segresnet_decoder_is_monais_segresnet_around_the_backbone():
    torch.manual_seed(0)
    net = SegResNet(init_filters=8, in_channels=1, out_channels=3, blocks_down=(1, 1, 1, 1)).eval()
    model = SegmentationModel(create_backbone("segresnet_tiny", 1, (32, 32, 16)), 3, "segresnet").eval()
    state = net.state_dict()
    encoder = ("convInit.", "down_layers.")
    model.backbone.model.load_state_dict({k: v for k, v in state.items() if k.startswith(encoder)})
    model.head.load_state_dict({k: v for k, v in state.items() if not k.startswith(encoder)})
    x = torch.randn(2, 1, 32, 32, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x), net(x))


@pytest.mark.parametrize("name, decoder", [("swin_unetr_tiny", "swin_unetr"), ("swin_unetr_tiny", "unet"),
                                           ("segresnet_tiny", "segresnet"), ("segresnet_tiny", "unet")])
def test_segmentation_trains_one_step_and_frozen_units_stay_bit_identical(name, decoder):
    torch.manual_seed(0)
    backbone = create_backbone(name, 1, SIZE)
    parse_strategy("q2").prepare(backbone, "stage")
    model = SegmentationModel(backbone, 2, decoder).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x, target = torch.randn(2, 1, *SIZE), torch.randint(0, 2, (2, *SIZE))
    loss = torch.nn.functional.cross_entropy(model(x), target)
    loss.backward()
    opt.step()
    after = model.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    second = {f"backbone.model.{n}" for n in params_under(backbone, backbone.unit_prefixes("stage")[1])}
    encoder = {k for k in before if k.startswith("backbone.")}
    assert moved & encoder == second  # weights and norm buffers of frozen units are untouched
    assert any(k.startswith("head.") for k in moved)
    assert torch.isfinite(loss)


def test_native_decoders_refuse_what_they_cannot_decode():
    with pytest.raises(ConfigError, match="'swin_unetr' decodes swin_unetr backbones, not segresnet_tiny"):
        SegmentationModel(create_backbone("segresnet_tiny", 1, SIZE), 2, "swin_unetr")
    with pytest.raises(ConfigError, match="divisible by 32 whose /32 map has more than one voxel"):
        SegmentationModel(create_backbone("swin_unetr_tiny", 1, 32), 2, "swin_unetr")
    with pytest.raises(ConfigError, match="divisible by 8"):
        SegmentationModel(create_backbone("segresnet_tiny", 1, (32, 32, 12)), 2, "segresnet")
    for name, decoder in (("swin_unetr_tiny", "swin_unetr"), ("segresnet_tiny", "segresnet")):
        truncated = create_backbone(name, 1, SIZE)
        parse_strategy({"name": "truncate", "keep": "0-0.75"}).prepare(truncated, "stage")
        with pytest.raises(ConfigError, match="truncated.*use 'unet'"):
            SegmentationModel(truncated, 2, decoder)
        assert SegmentationModel(truncated, 2, "unet")(torch.randn(1, 1, *SIZE)).shape == (1, 2, *SIZE)
