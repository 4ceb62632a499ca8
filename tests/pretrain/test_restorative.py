"""Restorative methods: Models Genesis corruptions, denoising AE, SparK (no leakage through the mask) and MAE.

Pre-training + fine-tuning through ``run`` for every registered method is covered by test_zoo.py."""

import math

import lightning as L
import pytest
import torch

from medtransfer.models.factory import create_backbone
from medtransfer.pretrain import METHODS
from medtransfer.pretrain import genesis_transforms as gt
from medtransfer.models.decoders import UNetDecoder, resize
from medtransfer.pretrain.denoising import DenoisingAE
from medtransfer.pretrain.mae import MAE
from medtransfer.pretrain.models_genesis import ModelsGenesis
from medtransfer.pretrain.spark import SparK, patchify

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


KW = dict(views={})
SHAPES = {2: (2, 1, 16, 16), 3: (2, 1, 12, 12, 12)}


def make(method, backbone_name, size, small_stem=False, **options):
    backbone = create_backbone(backbone_name, 1, size, small_stem)
    return method(backbone, method.Options(**options), **KW)


def normalised_patch_mse(pred_patches, target_patches, masked):
    """Written out: per masked patch, normalise the target by its own mean/std, then average the squared error."""
    total, count = 0.0, 0
    for b in range(pred_patches.shape[0]):
        for i in range(pred_patches.shape[1]):
            if masked[b, i]:
                t = target_patches[b, i]
                t = (t - t.mean()) / math.sqrt(((t - t.mean()) ** 2).mean().item() + 1e-6)
                total += ((pred_patches[b, i] - t) ** 2).mean().item()
                count += 1
    return total / count


# --- Models Genesis corruptions -----------------------------------------------------------------------------------
@pytest.mark.parametrize("dims", [2, 3])
def test_bezier_mapping_is_monotone_and_in_range(dims):
    torch.manual_seed(0)
    xs, ys = gt.bezier_curves(8, "cpu")
    assert (xs.diff(dim=1) >= 0).all() and (ys.diff(dim=1) >= 0).all()
    ramp = torch.linspace(0, 1, 4 ** dims).view(1, 1, *(4,) * dims).expand(8, 1, *(4,) * dims)
    out = gt.nonlinear_intensity(ramp, p=1.0).flatten(1)
    steps = out.diff(dim=1)
    assert ((steps >= -1e-6).all(dim=1) | (steps <= 1e-6).all(dim=1)).all()  # increasing or inverted, never both
    assert out.min() >= 0 and out.max() <= 1 and not torch.allclose(out, ramp.flatten(1))
    x = torch.rand(*SHAPES[dims])
    assert torch.equal(gt.nonlinear_intensity(x, p=0.0), x)


@pytest.mark.parametrize("dims", [2, 3])
def test_local_shuffle_permutes_pixels_within_windows(dims):
    torch.manual_seed(0)
    x = torch.rand(*SHAPES[dims])
    y = gt.local_shuffle(x, p=1.0, window_frac=0.25, fraction=1.0)
    assert y.shape == x.shape and not torch.equal(x, y)
    for b in range(len(x)):  # same values per sample: only moved around
        assert torch.equal(x[b].flatten().sort().values, y[b].flatten().sort().values)
    # local: every pixel moves less than one window (a quarter of the side) along each axis
    ramp = torch.arange(x[0, 0].numel(), dtype=torch.float32).view(1, 1, *x.shape[2:])
    moved = gt.local_shuffle(ramp, p=1.0, window_frac=0.25, fraction=1.0)
    src = torch.stack(torch.unravel_index(moved.flatten().long(), x.shape[2:]))
    dst = torch.stack(torch.unravel_index(torch.arange(ramp.numel()), x.shape[2:]))
    assert (src - dst).abs().max() < round(x.shape[2] * 0.25)
    assert torch.equal(gt.local_shuffle(x, p=0.0), x)


@pytest.mark.parametrize("dims", [2, 3])
def test_inpainting_only_inside_boxes_outpainting_only_outside(dims):
    torch.manual_seed(0)
    x = torch.rand(*SHAPES[dims])
    boxes = gt.box_mask(len(x), x.shape[2:], "cpu", 1 / 6, 1 / 3)
    assert boxes.any() and not boxes.all()
    inner, outer = gt.inpaint(x, boxes), gt.outpaint(x, boxes)
    inside, outside = boxes.expand_as(x), ~boxes.expand_as(x)
    assert torch.equal(inner[outside], x[outside]) and (inner[inside] != x[inside]).float().mean() > 0.99
    assert torch.equal(outer[inside], x[inside]) and (outer[outside] != x[outside]).float().mean() > 0.99
    for y in (inner, outer):
        assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    big = gt.box_mask(64, x.shape[2:], "cpu", 3 / 7, 4 / 7, max_boxes=1).flatten(1).float().mean(1)
    assert big.min() >= (3 / 7 * 0.99) ** dims * 0.5 and big.max() <= (4 / 7) ** dims + 1e-6


@pytest.mark.parametrize("dims", [2, 3])
def test_flip_is_applied_to_input_and_target_alike(dims):
    torch.manual_seed(0)
    x = torch.rand(16, *SHAPES[dims][1:])
    a, b = gt.flip(x, x.clone(), p=0.5)
    assert torch.equal(a, b) and not torch.equal(a, x)
    corrupted, target = gt.GenesisCorruption(local_rate=0, nonlinear_rate=0, paint_rate=0, flip_rate=0.5)(x)
    assert torch.equal(corrupted, target) and not torch.equal(target, x)


@pytest.mark.parametrize("dims", [2, 3])
def test_full_corruption_keeps_shape_range_and_is_seeded(dims):
    x = torch.rand(8, *SHAPES[dims][1:])
    torch.manual_seed(3)
    a, ta = gt.GenesisCorruption()(x)
    torch.manual_seed(3)
    b, tb = gt.GenesisCorruption()(x)
    torch.manual_seed(4)
    c, _ = gt.GenesisCorruption()(x)
    assert torch.equal(a, b) and torch.equal(ta, tb) and not torch.equal(a, c)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1 and not torch.equal(a, ta)


# --- decoder ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,size,small", [("resnet_tiny", 16, False), ("resnet_tiny_3d", 16, True),
                                             ("unet_tiny_3d", 32, False)])
def test_decoder_returns_the_input_shape(name, size, small):
    backbone = create_backbone(name, 1, size, small)
    decoder = UNetDecoder.for_backbone(backbone)
    x = torch.rand(2, 1, *backbone.input_size)
    assert decoder(backbone.feature_maps(x), x.shape[2:]).shape == x.shape


# --- SparK --------------------------------------------------------------------------------------------------------
SPARK_CASES = [(2, "resnet_tiny", 32, True), (3, "resnet_tiny_3d", 16, True)]


@pytest.mark.parametrize("dims,name,size,small", SPARK_CASES)
def test_spark_masked_content_never_reaches_visible_positions(dims, name, size, small):
    torch.manual_seed(0)
    method = make(SparK, name, size, small)
    assert math.prod(method.grid) > 1
    x = torch.rand(2, 1, *(size,) * dims)
    visible = method.random_mask(2, "cpu")
    hidden = ~resize(visible.float(), x.shape[2:]).bool()
    x2 = torch.where(hidden, torch.randn_like(x) * 5, x)  # arbitrary change at masked positions only

    def visible_diffs(mask_input, remask):
        torch.manual_seed(1)
        maps1 = method.sparse_feature_maps(x, visible, mask_input, remask)
        maps2 = method.sparse_feature_maps(x2, visible, mask_input, remask)
        out = []
        for m1, m2 in zip(maps1, maps2):
            keep = resize(visible.float(), m1.shape[2:]).bool().expand_as(m1)
            out.append((m1 - m2)[keep].abs().max().item())
        return out, maps1

    method.train()  # batch statistics: the strictest case for leakage
    diffs, maps = visible_diffs(True, True)
    assert max(diffs) == 0.0
    for fmap in maps:  # masked positions stay exactly empty at every stage
        hole = ~resize(visible.float(), fmap.shape[2:]).bool().expand_as(fmap)
        assert (fmap[hole] == 0).all()
    leaky, _ = visible_diffs(False, False)  # the plain network: masked content does reach visible positions
    assert max(leaky) > 1e-4
    _, dense = visible_diffs(True, False)  # without re-masking, masked positions fill up (SparK's "mask vanishing")
    assert any((f[~resize(visible.float(), f.shape[2:]).bool().expand_as(f)] != 0).any() for f in dense)


@pytest.mark.parametrize("dims,name,size,small", SPARK_CASES)
def test_spark_loss_is_masked_normalised_patch_mse(dims, name, size, small):
    torch.manual_seed(0)
    method = make(SparK, name, size, small)
    images, pred = torch.rand(2, 1, *(size,) * dims), torch.randn(2, 1, *(size,) * dims)
    visible = method.random_mask(2, "cpu")
    expected = normalised_patch_mse(patchify(pred, method.patch), patchify(images, method.patch),
                                    ~visible.flatten(1))
    assert method.loss_from_prediction(pred, images, visible).item() == pytest.approx(expected, rel=1e-5)
    n = math.prod(method.grid)
    assert (~visible).flatten(1).sum(1).eq(round(0.6 * n)).all()


def test_patchify_matches_hand_indexing():
    x = torch.arange(2 * 3 * 4 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4, 4)
    p = patchify(x, (2, 2, 2))
    # patch 5 = grid position (1, 0, 1); its first pixel is voxel (2, 0, 2), channel-last within a pixel
    assert p.shape == (2, 8, 24) and torch.equal(p[1, 5, :3], x[1, :, 2, 0, 2])


# --- MAE ----------------------------------------------------------------------------------------------------------
def tiny_mae(size=16):
    return make(MAE, "vit_micro", size, decoder_dim=32, decoder_depth=1, decoder_heads=2)


def test_mae_encoder_sees_only_visible_tokens_and_matches_the_backbone():
    torch.manual_seed(0)
    method = tiny_mae()
    method.eval()
    x = torch.rand(2, 1, 16, 16)
    keep, masked = method.random_mask(2, "cpu")
    assert keep.shape == (2, 4) and masked.shape == (2, 12)  # 75 % of the 16 patches masked
    encoded = method.encode(x, keep)
    assert encoded.shape == (2, 1 + 4, 32)
    tokens = x
    for step in method.backbone.steps:
        tokens = method.backbone.run_step(step, tokens)
    every = torch.arange(16).expand(2, 16)
    assert torch.allclose(method.encode(x, every), method.backbone.finish(tokens), atol=1e-5)
    x2 = x.clone()  # overwrite every masked patch: the encoder's output must not move
    for b in range(2):
        for i in masked[b].tolist():
            row, col = divmod(i, 4)
            x2[b, :, row * 4:(row + 1) * 4, col * 4:(col + 1) * 4] = 7.0
    assert not torch.equal(x2, x) and torch.equal(method.encode(x2, keep), encoded)


def test_mae_loss_is_masked_normalised_patch_mse():
    torch.manual_seed(0)
    method = tiny_mae()
    images, pred = torch.rand(2, 1, 16, 16), torch.randn(2, 16, 16)
    _, idx_mask = method.random_mask(2, "cpu")
    masked = torch.zeros(2, 16, dtype=torch.bool).scatter(1, idx_mask, True)
    target = images.unfold(2, 4, 4).unfold(3, 4, 4).reshape(2, 16, 16)  # (row, col) patches, 4x4 pixels each
    expected = normalised_patch_mse(pred, target, masked)
    assert method.loss_from_prediction(pred, images, idx_mask).item() == pytest.approx(expected, rel=1e-5)


# --- learning, support ----------------------------------------------------------------------------------------------
LEARN_CASES = [
    (ModelsGenesis, "resnet_tiny", 16, False, {}),
    (ModelsGenesis, "resnet_tiny_3d", 16, True, {}),
    (ModelsGenesis, "unet_tiny_3d", 32, False, {}),
    (DenoisingAE, "resnet_tiny", 16, False, {}),
    (DenoisingAE, "resnet_tiny_3d", 16, True, {"mask_ratio": 0.2}),
    (SparK, "resnet_tiny", 32, True, {}),
    (SparK, "resnet_tiny_3d", 16, True, {}),
    (MAE, "vit_micro", 16, False, {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2}),
]


@pytest.mark.parametrize("method_cls,name,size,small,options", LEARN_CASES,
                         ids=[f"{c[0].__name__}-{c[1]}" for c in LEARN_CASES])
def test_loss_goes_down_on_a_fixed_batch(method_cls, name, size, small, options, fixed_batch_losses):
    L.seed_everything(0, verbose=False)
    method = make(method_cls, name, size, small, **options)
    dims = method.backbone.spatial_dims
    images = torch.rand(2 if dims == 3 else 8, 1, *(size,) * dims)
    losses = fixed_batch_losses(method, images, lr=3e-3)
    assert losses[-1] < losses[0] and sum(losses[-3:]) < sum(losses[:3])


def test_unsupported_combinations_are_refused():
    vit, resnet = create_backbone("vit_micro", 1, 16), create_backbone("resnet_tiny", 1, 16)
    unet, resnet3d = create_backbone("unet_tiny_3d", 1, 32), create_backbone("resnet_tiny_3d", 1, 16, True)
    assert MAE.unsupported(vit) is None
    assert "vit" in MAE.unsupported(resnet) and "3D" not in (MAE.unsupported(resnet) or "")
    assert "2D" in MAE.unsupported(resnet3d)
    assert SparK.unsupported(vit) and SparK.unsupported(unet) and SparK.unsupported(resnet3d) is None
    for cls in (ModelsGenesis, DenoisingAE):
        assert cls.unsupported(vit) and cls.unsupported(unet) is None and cls.unsupported(resnet3d) is None
    odd = create_backbone("resnet_tiny", 1, 28, True)  # maps 28, 14, 7, 4 (ceil): a 4x4 mask misaligns at 7
    assert "divisible" in SparK.unsupported(odd)


def test_registry_and_family():
    for name, cls in {"models_genesis": ModelsGenesis, "denoising_ae": DenoisingAE, "spark": SparK,
                      "mae": MAE}.items():
        assert METHODS[name] is cls and cls.family == "restorative"
