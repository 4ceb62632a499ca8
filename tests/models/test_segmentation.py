"""Segmentation networks on medtransfer backbones: shapes, the pyramid the decoder reads, checkpoints, truncation."""

import pytest
import torch

from medtransfer.errors import ConfigError
from medtransfer.finetune.strategies import parse_strategy
from medtransfer.models.checkpoint import load_backbone_weights, read_weights, save_backbone
from medtransfer.models.factory import create_backbone
from medtransfer.models.segmentation import INPUT, SegmentationModel


@pytest.mark.parametrize("name, in_chans, size, decoder, kw", [
    ("resnet_tiny", 3, (64, 48), "unet", {}),
    ("resnet_tiny", 1, (28, 28), "unet", {"small_stem": True}),
    ("resnet_tiny", 3, (64, 64), "fpn", {}),
    ("vit_micro", 1, (32, 32), "unet", {}),
    ("resnet_tiny_3d", 1, (32, 32, 32), "unet", {}),
    ("unet_tiny_3d", 2, (16, 32, 24), "unet", {}),
])
def test_logits_have_one_map_per_output_at_the_input_resolution(name, in_chans, size, decoder, kw):
    torch.manual_seed(0)
    model = SegmentationModel(create_backbone(name, in_chans, size, **kw), 3, decoder).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, in_chans, *size))
    assert logits.shape == (2, 3, *size)
    assert torch.isfinite(logits).all()


def test_pyramid_fills_levels_the_encoder_skips_and_keeps_the_deepest_map_per_level():
    resnet = SegmentationModel(create_backbone("resnet_tiny", 1, 64), 2).pyramid
    # stem and layer1 are both at /4: layer1 (deeper) is the skip there; /2 has no map (empty placeholder) and the
    # full resolution has none either, so the input image is the skip there
    assert resnet.sources == (INPUT, None, 1, 2, 3, 4)
    assert resnet.channels == (1, 0, 16, 32, 64, 128)
    assert resnet.decoder_widths() == [64, 32, 16, 16, 16]  # to /16, /8, /4, /2 and full resolution
    # ViT, patch 4: the embedding's and the last block's token grids are both at /4; the last block's is used
    vit = SegmentationModel(create_backbone("vit_micro", 1, 32), 2).pyramid
    assert vit.sources == (INPUT, None, 1) and vit.channels == (1, 0, 32)
    unet = SegmentationModel(create_backbone("unet_tiny_3d", 1, 32), 2).pyramid  # conv_0 at full resolution
    assert unet.sources == (0, 1, 2, 3, 4)


def test_encoder_weights_come_from_the_checkpoint_unchanged(tmp_path):
    torch.manual_seed(1)
    pretrained = create_backbone("resnet_tiny", 3, 32)
    with torch.no_grad():
        for t in pretrained.model.state_dict().values():
            t.add_(torch.rand_like(t.float()).to(t.dtype))  # weights and BatchNorm buffers unlike a fresh init
    path = save_backbone(pretrained, tmp_path / "backbone")
    backbone = create_backbone("resnet_tiny", 3, 32)
    load_backbone_weights(backbone, read_weights(path), str(path))
    model = SegmentationModel(backbone, 2)
    saved = read_weights(path)
    encoder = {k.removeprefix("backbone.model."): v for k, v in model.state_dict().items()
               if k.startswith("backbone.model.")}
    assert encoder.keys() == saved.keys()
    assert all(torch.equal(encoder[k], saved[k]) for k in saved)
    assert any(k.startswith("head.") for k in model.state_dict())  # the decoder is separate and new


def test_truncated_encoder_gives_a_shallower_pyramid_and_fewer_decoder_blocks():
    full = SegmentationModel(create_backbone("resnet_tiny", 1, 64), 2)
    backbone = create_backbone("resnet_tiny", 1, 64)
    parse_strategy({"name": "truncate", "keep": "0-0.5"}).prepare(backbone, "stage")
    cut = SegmentationModel(backbone, 2)
    assert len(cut.pyramid.sources) == len(full.pyramid.sources) - 2  # layer3 (/16) and layer4 (/32) are gone
    assert len(cut.head[0].blocks) == len(full.head[0].blocks) - 2
    assert cut.pyramid.channels[-1] == 32  # the deepest kept map is layer2's
    assert cut(torch.randn(2, 1, 64, 64)).shape == (2, 2, 64, 64)
    assert not any(k.startswith("backbone.model.layer3.") for k, _ in cut.named_parameters())


def test_fpn_is_refused_where_it_cannot_work():
    with pytest.raises(ConfigError, match="'fpn' is 2D"):
        SegmentationModel(create_backbone("resnet_tiny_3d", 1, 32), 2, "fpn")
    truncated = create_backbone("resnet_tiny", 1, 64)
    parse_strategy({"name": "truncate", "keep": "0-0.5"}).prepare(truncated, "stage")
    with pytest.raises(ConfigError, match="four consecutive scales"):
        SegmentationModel(truncated, 2, "fpn")
    with pytest.raises(ConfigError, match="divisible by 32"):
        SegmentationModel(create_backbone("resnet_tiny", 1, 48), 2, "fpn")
    with pytest.raises(ConfigError, match="allowed: fpn, segresnet, swin_unetr, unet"):
        SegmentationModel(create_backbone("resnet_tiny", 1, 64), 2, "deeplab")
