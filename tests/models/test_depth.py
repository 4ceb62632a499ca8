import copy

import pytest
import torch

from medtransfer.errors import ConfigError
from medtransfer.models.backbones import owns
from medtransfer.models.depth import DepthRange, describe_units
from medtransfer.models.factory import create_backbone

BIG = {"resnet50": 32, "resnet18": 32, "vit_small_patch16": 32}  # small inputs: the depth map does not depend on them
TINY = {"resnet_tiny": 32, "vit_micro": 32, "resnet_tiny_3d": 16, "unet_tiny_3d": 32}


@pytest.fixture(scope="module")
def backbones():
    return {name: create_backbone(name, 3, size) for name, size in {**BIG, **TINY}.items()}


@pytest.mark.parametrize("text, expected", [
    ("0.25-0.5", (0.25, 0.5)), ("25-50%", (0.25, 0.5)), ("25-50", (0.25, 0.5)), (" 0 - 75 % ", (0.0, 0.75)),
    ("q2", (0.25, 0.5)), ("Q3", (0.5, 0.75)), ("q1-q3", (0.0, 0.75)), ("0-1", (0.0, 1.0)),
    ("12.5-37.5%", (0.125, 0.375)),
])
def test_parse(text, expected):
    parsed = DepthRange.parse(text)
    assert (parsed.start, parsed.end) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["0.5-0.25", "abc", "0-1.5", "0..25-0.5", "q3-q1", "50-150%", "0.5", ""])
def test_parse_rejects(text):
    with pytest.raises(ConfigError, match=r"keep: .* is not a depth range; allowed: .*q1-q3"):
        DepthRange.parse(text, key="keep")


@pytest.mark.parametrize("n, text, expected", [
    (4, "q1", [0]), (4, "q2", [1]), (4, "q1-q3", [0, 1, 2]), (4, "0-1", [0, 1, 2, 3]),
    (16, "q2", [4, 5, 6, 7]), (16, "q4", [12, 13, 14, 15]),
    (12, "q1", [0, 1, 2]), (12, "q3", [6, 7, 8]),
    # 6 units: midpoints 1/12, 3/12, 5/12, ...; the unit whose midpoint is exactly 0.25 goes to q2 (half-open ranges)
    (6, "q1", [0]), (6, "q2", [1, 2]), (6, "q3", [3]), (6, "q4", [4, 5]), (6, "0-0.75", [0, 1, 2, 3]),
])
def test_select_midpoint_rule(n, text, expected):
    assert DepthRange.parse(text).select(n) == expected


def test_select_nothing_is_an_error():
    with pytest.raises(ConfigError, match="selects none of the 4 units"):
        DepthRange.parse("0.3-0.35").select(4)


def _unit_steps(backbone, view):
    return [[backbone.steps[i].name for i in group] for group in backbone.view(view)]


def test_resnet50_views(backbones):
    b = backbones["resnet50"]
    blocks = _unit_steps(b, "block")
    assert len(blocks) == 16 and blocks[0] == ["stem", "layer1.0"] and all(len(u) == 1 for u in blocks[1:])
    assert [len(DepthRange.parse(q).select(16)) for q in ("q1", "q2", "q3", "q4")] == [4, 4, 4, 4]
    stages = _unit_steps(b, "stage")
    assert [len(u) for u in stages] == [4, 4, 6, 3]  # stem + 3 blocks, then 4, 6, 3 bottlenecks
    assert [u[0] for u in stages] == ["stem", "layer2.0", "layer3.0", "layer4.0"]
    assert [u[-1] for u in stages] == ["layer1.2", "layer2.3", "layer3.5", "layer4.2"]


def test_resnet50_cut_after_layer3_gives_1024_features(backbones):
    b = copy.deepcopy(backbones["resnet50"])
    kept = DepthRange.parse("0-0.75").select(4)
    b.truncate(b.view("stage")[kept[-1]][-1] + 1)
    assert b.steps[-1].name == "layer3.5" and b.num_features == 1024
    with torch.no_grad():
        assert b(torch.randn(1, 3, 32, 32)).shape == (1, 1024)


def test_resnet18_block_view(backbones):
    assert len(backbones["resnet18"].view("block")) == 8


def test_vit_small_units(backbones):
    b = backbones["vit_small_patch16"]
    assert _unit_steps(b, "block")[0] == ["embed", "blocks.0"] and len(b.view("block")) == 12
    units = b.unit_prefixes("block")
    assert {"patch_embed", "cls_token", "pos_embed"} <= set(units[0])
    owners = [i for i, u in enumerate(units) if any(owns(p, "norm.weight") for p in u)]
    assert owners == [11]
    with pytest.raises(ConfigError, match="'stage' is not a view of vit_small_patch16; allowed: block"):
        b.view("stage")


@pytest.mark.parametrize("name", [*BIG, *TINY])
def test_views_partition_steps_and_parameters(backbones, name):
    b = backbones[name]
    params = dict(b.model.named_parameters())
    total = sum(p.numel() for p in params.values())
    for view in b.views:
        assert [i for group in b.view(view) for i in group] == list(range(len(b.steps)))
        units = b.unit_prefixes(view)
        for pname in params:  # every parameter belongs to exactly one unit
            assert sum(any(owns(p, pname) for p in u) for u in units) == 1, (view, pname)
        rows = describe_units(b, view)
        assert len(rows) == len(units)
        assert sum(r["params"] for r in rows) == total
        assert sum(r["param_share"] for r in rows) == pytest.approx(1.0)
        assert rows[-1]["channels"] == b.num_features


def test_describe_units_rows(backbones):
    rows = describe_units(backbones["resnet_tiny"], "stage")
    assert [r["steps"] for r in rows] == ["stem .. layer1.0", "layer2.0", "layer3.0", "layer4.0"]
    assert [r["quarter"] for r in rows] == ["q1", "q2", "q3", "q4"]
    assert [r["depth"] for r in rows] == ["0%-25%", "25%-50%", "50%-75%", "75%-100%"]
    assert [r["channels"] for r in rows] == [16, 32, 64, 128]
