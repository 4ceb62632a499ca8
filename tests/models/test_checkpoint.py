import json

import pytest
import torch

from medtransfer import __version__
from medtransfer.data.normalisation import DEFAULT, IMAGENET
from medtransfer.errors import CheckpointError
from medtransfer.models.checkpoint import (file_normalisation, load_backbone_weights, read_metadata, read_weights,
                                           save_backbone)
from medtransfer.models.factory import create_backbone
from medtransfer.models.zoo import load_init


class NotWeights:
    """A pickled object that only full unpickling (code execution) could rebuild."""


def _trained(name="resnet_tiny", in_chans=3, size=32, **kw):
    """A backbone whose weights and BatchNorm buffers differ from a fresh one."""
    backbone = create_backbone(name, in_chans, size, **kw)
    with torch.no_grad():
        for t in backbone.model.state_dict().values():
            t.copy_(torch.randint_like(t, 100) if t.dtype == torch.long else torch.randn_like(t))
    return backbone


def _assert_equal_state(backbone, source):
    got = backbone.model.state_dict()
    assert got.keys() == source.keys()
    assert all(torch.equal(got[k], source[k]) for k in source)


def test_round_trip_is_bit_identical_with_sidecar(tmp_path):
    source = _trained(small_stem=True)
    path = save_backbone(source, tmp_path / "sub" / "ckpt.pt")
    assert path == tmp_path / "sub" / "ckpt.safetensors"
    assert sorted(p.name for p in path.parent.iterdir()) == ["ckpt.json", "ckpt.safetensors"]  # no *.tmp left
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["format"] == "medtransfer-backbone" and meta["medtransfer_version"] == __version__
    assert meta["backbone"] == {"name": "resnet_tiny", "in_chans": 3, "input_size": [32, 32], "small_stem": True,
                                "spatial_dims": 2}
    assert len(meta["sha256"]) == 64
    target = create_backbone("resnet_tiny", 3, 32, small_stem=True)
    assert load_backbone_weights(target, read_weights(path), str(path)) == {"adapted": [], "ignored": []}
    _assert_equal_state(target, source.model.state_dict())


def test_metadata_kwargs_round_trip(tmp_path):
    extra = {"method": "simclr", "epochs": 3, "dataset": {"name": "pneumoniamnist", "fraction": 0.5},
             "inits": ["imagenet", "simclr"]}
    path = save_backbone(create_backbone("vit_micro", 1, 32), tmp_path / "w", **extra)
    meta = read_metadata(path)
    assert {k: meta[k] for k in extra} == extra
    assert meta["backbone"]["name"] == "vit_micro"
    assert read_metadata(tmp_path / "foreign.safetensors") == {}


def test_tampered_and_truncated_files_are_refused(tmp_path):
    path = save_backbone(_trained(), tmp_path / "w")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # a flipped bit in the last tensor: still parses, but the hash differs
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 differs"):
        read_weights(path)
    path.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        read_weights(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_weights(tmp_path / "missing.safetensors")


def test_pth_with_ddp_prefix_in_state_dict(tmp_path):
    source = _trained().model.state_dict()
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in source.items()}}, tmp_path / "w.pth")
    target = create_backbone("resnet_tiny", 3, 32)
    load_backbone_weights(target, read_weights(tmp_path / "w.pth"), "w.pth")
    _assert_equal_state(target, source)


def test_pickled_code_is_refused(tmp_path):
    state = create_backbone("resnet_tiny", 3, 32).model.state_dict()
    torch.save({"state_dict": state, "extra": NotWeights()}, tmp_path / "w.pth")
    with pytest.raises(CheckpointError, match="weights_only"):
        read_weights(tmp_path / "w.pth")


def test_head_keys_are_ignored_and_reported():
    state = dict(_trained().model.state_dict(), **{"fc.weight": torch.zeros(10, 128), "fc.bias": torch.zeros(10)})
    report = load_backbone_weights(create_backbone("resnet_tiny", 3, 32), state, "src")
    assert report == {"adapted": [], "ignored": ["fc.bias", "fc.weight"]}


def test_other_architecture_lists_missing_and_unexpected_keys():
    state = create_backbone("vit_micro", 3, 32).model.state_dict()
    with pytest.raises(CheckpointError, match=r"src does not fit backbone 'resnet_tiny'.*"
                                              r"missing \(\d+\): bn1\.bias.*unexpected \(\d+\): blocks\.0\."):
        load_backbone_weights(create_backbone("resnet_tiny", 3, 32), state, "src")


def test_small_stem_mismatch_names_the_shape():
    state = create_backbone("resnet_tiny", 3, 32).model.state_dict()
    target = create_backbone("resnet_tiny", 3, 32, small_stem=True)
    before = target.model.conv1.weight.clone()
    with pytest.raises(CheckpointError, match=r"small_stem=True.*shape mismatch \(1\): conv1\.weight: "
                                              r"checkpoint \(16, 3, 7, 7\) vs model \(16, 3, 3, 3\)"):
        load_backbone_weights(target, state, "src")
    assert torch.equal(target.model.conv1.weight, before)  # nothing half-loaded


@pytest.mark.parametrize("name, size, kw", [("resnet_tiny", 32, {}), ("resnet_tiny_3d", 16, {"small_stem": True}),
                                            ("vit_micro", 32, {})])
def test_rgb_checkpoint_into_grayscale_sums_input_channels(name, size, kw):
    source = _trained(name, 3, size, **kw)
    target = create_backbone(name, 1, size, **kw)
    conv = target.first_conv
    report = load_backbone_weights(target, source.model.state_dict(), "src")
    assert report["adapted"] == [f"{conv}: 3 -> 1 input channels"]
    weight = target.model.state_dict()[conv]
    assert weight.ndim == 2 + target.spatial_dims
    assert torch.equal(weight, source.model.state_dict()[conv].sum(dim=1, keepdim=True))
    others = {k: v for k, v in source.model.state_dict().items() if k != conv}
    assert all(torch.equal(target.model.state_dict()[k], v) for k, v in others.items())


@pytest.mark.parametrize("from_chans, to_chans", [(2, 3), (4, 5)])  # timm adapts only 3 -> any and any -> 1
def test_unconvertible_channel_count_is_a_checkpoint_error(from_chans, to_chans):
    state = create_backbone("resnet_tiny", from_chans, 32).model.state_dict()
    target = create_backbone("resnet_tiny", to_chans, 32)
    before = target.model.conv1.weight.clone()
    with pytest.raises(CheckpointError,
                       match=rf"cannot adapt conv1\.weight from {from_chans} to {to_chans} input channels"):
        load_backbone_weights(target, state, "src")
    assert torch.equal(target.model.conv1.weight, before)


@pytest.mark.parametrize("name, size", [("resnet_tiny", 32), ("resnet_tiny_3d", 16)])
def test_grey_weights_adapt_to_rgb_so_a_grey_image_in_rgb_gives_the_grey_features(name, size):
    grey = create_backbone(name, 1, size).eval()
    rgb = create_backbone(name, 3, size).eval()
    report = load_backbone_weights(rgb, grey.model.state_dict(), "grey")
    assert report["adapted"] == [f"{grey.first_conv}: 1 -> 3 input channels"]
    image = torch.rand(2, 1, *grey.input_size)
    with torch.no_grad():
        assert torch.allclose(rgb(image.expand(-1, 3, *image.shape[2:])), grey(image), atol=1e-5)


def test_checkpoint_records_and_restores_its_normalisation(tmp_path):
    """The JSON keeps the statistics the weights were trained with; loading the file onto grey data adapts the first
    conv for them, while a file without any (older or foreign) keeps 0.5 / 0.5 and timm's plain sum."""
    source = _trained()
    imagenet = save_backbone(source, tmp_path / "imagenet.safetensors", normalisation=IMAGENET.to_dict())
    plain = save_backbone(source, tmp_path / "plain.safetensors")
    torch.save(source.model.state_dict(), tmp_path / "foreign.pth")
    assert read_metadata(imagenet)["normalisation"] == {"mean": list(IMAGENET.mean), "std": list(IMAGENET.std)}
    assert file_normalisation(imagenet) == IMAGENET
    assert file_normalisation(plain) == DEFAULT and file_normalisation(tmp_path / "foreign.pth") == DEFAULT
    weight = source.model.conv1.weight.detach()
    grey = create_backbone("resnet_tiny", 1, 32)
    load_init(grey, imagenet)
    scales = IMAGENET.grey_weight_scales().float().view(1, 3, 1, 1)
    torch.testing.assert_close(grey.model.conv1.weight.detach(), (weight * scales).sum(1, keepdim=True))
    for path in (plain, tmp_path / "foreign.pth"):
        load_init(grey, path)
        assert torch.equal(grey.model.conv1.weight.detach(), weight.sum(1, keepdim=True))
