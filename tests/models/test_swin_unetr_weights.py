"""Swin UNETR's self-supervised weights through the zoo: files are built in the published layouts (the release's
'module.' + MLP fc1/fc2 names, written here from the key list MONAI's ``SwinUNETR.load_from`` reads; the SSL
script's checkpoint; a fine-tuned SwinUNETR), imported, and must equal the source bit for bit, and agree with MONAI's
own loader. No download: the real entry is checked for consistency only."""

import dataclasses

import pytest
import torch
from monai.networks.nets import SwinUNETR

from medtransfer.data.normalisation import UNIT_RANGE
from medtransfer.errors import CheckpointError
from medtransfer.models.checkpoint import read_metadata, read_weights
from medtransfer.models.convert import detect_layout
from medtransfer.models.factory import create_backbone
from medtransfer.models.readers import flatten_source, read_source
from medtransfer.models.zoo import ZOO, import_file, load_foreign

TINY = dict(feature_size=12, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=4)
BLOCK_KEYS = ("norm1.weight", "norm1.bias", "attn.relative_position_bias_table", "attn.relative_position_index",
              "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias",
              "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias")  # SwinTransformerBlock.load_from


def released_state(depths=(2, 2, 2, 2), feature_size=12, heads=(1, 2, 4, 8), window=4, in_chans=1, seed=0):
    """model_swinvit.pt's 'state_dict': every key MONAI's loader reads, random values of the right shapes."""
    gen = torch.Generator().manual_seed(seed)
    window_tokens = (2 * window - 1) ** 3
    state = {"module.patch_embed.proj.weight": torch.randn(feature_size, in_chans, 2, 2, 2, generator=gen),
             "module.patch_embed.proj.bias": torch.randn(feature_size, generator=gen)}
    for stage, (depth, head) in enumerate(zip(depths, heads), start=1):
        dim = feature_size * 2 ** (stage - 1)
        shapes = {"norm1.weight": (dim,), "norm1.bias": (dim,), "attn.relative_position_bias_table":
                  (window_tokens, head), "attn.qkv.weight": (3 * dim, dim), "attn.qkv.bias": (3 * dim,),
                  "attn.proj.weight": (dim, dim), "attn.proj.bias": (dim,), "norm2.weight": (dim,),
                  "norm2.bias": (dim,), "mlp.fc1.weight": (4 * dim, dim), "mlp.fc1.bias": (4 * dim,),
                  "mlp.fc2.weight": (dim, 4 * dim), "mlp.fc2.bias": (dim,)}
        for block in range(depth):
            root = f"module.layers{stage}.0.blocks.{block}."
            state.update({root + k: torch.randn(*s, generator=gen) for k, s in shapes.items()})
            state[root + "attn.relative_position_index"] = torch.randint(0, window_tokens, (window ** 3,) * 2,
                                                                         generator=gen)
        down = f"module.layers{stage}.0.downsample."
        state.update({down + "reduction.weight": torch.randn(2 * dim, 8 * dim, generator=gen),
                      down + "norm.weight": torch.randn(8 * dim, generator=gen),
                      down + "norm.bias": torch.randn(8 * dim, generator=gen)})
    assert {k.split("blocks.0.")[-1] for k in state if "blocks.0." in k} == set(BLOCK_KEYS)
    return state


def monai_name(key):
    return key.removeprefix("module.").replace("mlp.fc1.", "mlp.linear1.").replace("mlp.fc2.", "mlp.linear2.")


def imported(path, layout=None, in_chans=1):
    backbone = create_backbone("swin_unetr_tiny", in_chans, 32)
    return backbone, load_foreign(backbone, path, layout)


def test_released_layout_imports_bit_identical_like_monais_loader(tmp_path):
    state = released_state()
    torch.save({"state_dict": state}, tmp_path / "model_swinvit.pt")
    flat, _ = flatten_source(read_source(tmp_path / "model_swinvit.pt"), "model_swinvit.pt")
    assert detect_layout(flat) == "swin_unetr"
    backbone, report = imported(tmp_path / "model_swinvit.pt")  # layout auto-detected, as for a raw init file
    assert report["layout"] == "swin_unetr" and report["loaded"] == len(state) and not report["dropped"]
    got = backbone.model.state_dict()
    assert got.keys() == {monai_name(k) for k in state}
    assert all(torch.equal(got[monai_name(k)], v) for k, v in state.items())
    net = SwinUNETR(in_channels=1, out_channels=2, **TINY)
    net.load_from({"state_dict": state})  # MONAI's own reading of the release
    theirs = net.swinViT.state_dict()
    assert all(torch.equal(got[k], theirs[k]) for k in got)


def test_ssl_script_checkpoint_drops_its_heads(tmp_path):
    encoder = {k.replace("module.", "module.swin_vit.", 1): v for k, v in released_state(seed=1).items()}
    heads = {"module.rotation_head.weight": torch.randn(4, 192),
             "module.contrastive_head.weight": torch.randn(512, 192),
             "module.conv.0.weight": torch.randn(96, 192, 3, 3, 3), "module.conv.1.weight": torch.randn(96)}
    torch.save({"global_step": 10, "state_dict": {**encoder, **heads}, "optimizer": {"state": {}}},
               tmp_path / "model_bestValRMSE.pt")
    backbone, report = imported(tmp_path / "model_bestValRMSE.pt", "swin_unetr")
    assert report["dropped"] == {"SSL heads (rotation, contrastive, reconstruction)": 4}
    got = backbone.model.state_dict()
    assert all(torch.equal(got[monai_name(k.replace("swin_vit.", ""))], v) for k, v in encoder.items())


def test_fine_tuned_swin_unetr_drops_its_decoder_and_a_missing_position_index_is_the_windows(tmp_path):
    net = SwinUNETR(in_channels=1, out_channels=3, **TINY)
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("relative_position_index")}
    torch.save(state, tmp_path / "swin_unetr_btcv.pt")
    backbone, report = imported(tmp_path / "swin_unetr_btcv.pt", "swin_unetr")
    decoder = [k for k in state if not k.startswith("swinViT.")]
    assert report["dropped"] == {"Swin UNETR decoder": len(decoder)}
    theirs = net.swinViT.state_dict()
    got = backbone.model.state_dict()
    assert got.keys() == theirs.keys() and all(torch.equal(got[k], theirs[k]) for k in got)


def test_grey_release_adapts_to_two_channels(tmp_path):
    state = released_state()
    torch.save({"state_dict": state}, tmp_path / "model_swinvit.pt")
    backbone, report = imported(tmp_path / "model_swinvit.pt", in_chans=2)
    assert report["adapted"] == ["patch_embed.proj.weight: 1 -> 2 input channels"]
    weight = backbone.model.patch_embed.proj.weight
    grey = state["module.patch_embed.proj.weight"]
    assert torch.equal(weight[:, :1], grey / 2) and torch.equal(weight[:, 1:], grey / 2)


def test_wrong_layout_is_one_error_naming_the_keys(tmp_path):
    resnet = create_backbone("resnet_tiny_3d", 1, 16).model.state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in resnet.items()}}, tmp_path / "resnet.pt")
    with pytest.raises(CheckpointError, match=r"layout 'swin_unetr': cannot place \d+: bn1\.bias.*not a swin_unetr"):
        imported(tmp_path / "resnet.pt", "swin_unetr")
    torch.save({"state_dict": released_state(feature_size=24, heads=(3, 6, 12, 24))}, tmp_path / "wide.pt")
    with pytest.raises(CheckpointError, match=r"does not fit backbone 'swin_unetr_tiny'.*shape mismatch"):
        imported(tmp_path / "wide.pt")


def test_zoo_entry_imports_a_release_shaped_file(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDTRANSFER_CACHE", str(tmp_path / "cache"))
    real = ZOO["swin_unetr_ssl"]
    assert real.url.endswith("/model_swinvit.pt") and real.layout == "swin_unetr" and real.direct
    assert real.checksum is None and "sha256" in real.note  # none published: the import records the observed one
    assert (real.architecture, real.in_chans, real.normalisation) == ("swin_unetr", 1, UNIT_RANGE)
    monkeypatch.setitem(ZOO, "swin_tiny_ssl", dataclasses.replace(real, architecture="swin_unetr_tiny",
                                                                  input_size=(32, 32, 32)))
    state = released_state()
    torch.save({"state_dict": state}, tmp_path / "model_swinvit.pt")
    cached, report = import_file("swin_tiny_ssl", tmp_path / "model_swinvit.pt")
    assert report["checksum_verified"] is False and len(report["sha256"]) == 64
    weights = read_weights(cached)
    assert all(torch.equal(weights[monai_name(k)], v) for k, v in state.items())
    assert read_metadata(cached)["layout"] == "swin_unetr"


def test_real_architecture_takes_the_released_shapes(tmp_path):
    """The zoo's ``swin_unetr`` has exactly the release's tensors (48 features, 2-2-2-2 blocks, 3-6-12-24 heads,
    window 7), so the published file loads without adaptation."""
    state = released_state(depths=(2, 2, 2, 2), feature_size=48, heads=(3, 6, 12, 24), window=7)
    backbone = create_backbone("swin_unetr", 1, 32)
    target = backbone.model.state_dict()
    assert {monai_name(k): tuple(v.shape) for k, v in state.items()} == {k: tuple(v.shape) for k, v in target.items()}
