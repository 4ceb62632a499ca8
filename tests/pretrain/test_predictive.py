"""Predictive methods (rotation, jigsaw / Rubik's cube) and multi-SSL: pretext labels are exact, losses are plain
cross-entropy, they learn, and multi-SSL shares one backbone."""

import itertools

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch

from medtransfer.config import PretrainConfig
from medtransfer.config_files import validate_config
from medtransfer.errors import ConfigError
from medtransfer.models.checkpoint import read_metadata
from medtransfer.models.factory import create_backbone
from medtransfer.pretrain import METHODS
from medtransfer.pretrain.jigsaw import (MIN_HAMMING_9_100, Jigsaw, JigsawOptions, from_tiles, hamming_permutations,
                                        random_crop_tiles, shuffle_tiles, to_tiles, unshuffle_tiles)
from medtransfer.pretrain.module import PretrainModule
from medtransfer.pretrain.multi_ssl import MultiSSL, MultiSSLOptions
from medtransfer.pretrain.rotation import ROTATIONS, Rotation, RotationOptions, rotate
from medtransfer.pretrain.run import check_options, pretrain

KW = dict(views={})


def tiny_backbone(spatial_dims, size=16):
    if spatial_dims == 2:
        return create_backbone("resnet_tiny", 1, size)
    return create_backbone("resnet_tiny_3d", 1, size, small_stem=True)


def hand_cross_entropy(logits, labels):
    return -(logits.log_softmax(1)[torch.arange(len(labels)), labels]).mean()


def min_pairwise_hamming(perms):
    d = (perms[:, None] != perms[None]).sum(-1)
    np.fill_diagonal(d, perms.shape[1] + 1)
    return d.min()


# --- rotation ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_rotation_labels_invert_exactly_and_are_distinct(spatial_dims):
    torch.manual_seed(0)
    n = len(ROTATIONS[spatial_dims])
    assert n == (4 if spatial_dims == 2 else 10)
    x = torch.rand(3 * n, 2, *(6,) * spatial_dims)
    labels = torch.arange(n).repeat(3)[torch.randperm(3 * n)]
    rotated = rotate(x, labels)
    assert torch.equal(rotate(rotated, labels, inverse=True), x)
    generic = torch.rand(1, 1, *(5,) * spatial_dims).expand(n, -1, *(-1,) * spatial_dims).contiguous()
    all_rot = rotate(generic, torch.arange(n)).flatten(1)
    assert len({tuple(r.tolist()) for r in all_rot}) == n  # no two labels give the same volume


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_rotation_pretext_uses_every_class_and_plain_cross_entropy(spatial_dims):
    method = Rotation(tiny_backbone(spatial_dims), RotationOptions(all_rotations=True, augment=False), **KW)
    images = torch.rand(2, 1, *(16,) * spatial_dims)
    inputs, labels = method.pretext(images)
    assert set(labels.tolist()) == set(range(method.n_classes))
    originals = images.repeat(method.n_classes, *(1,) * (1 + spatial_dims))
    assert torch.equal(rotate(inputs, labels, inverse=True), originals)
    torch.manual_seed(3)
    logits, labels = method.predict(images)
    assert torch.allclose(method.criterion(logits, labels), hand_cross_entropy(logits, labels), atol=1e-6)
    torch.manual_seed(3)
    assert torch.allclose(method.ssl_loss(images), hand_cross_entropy(logits, labels), atol=1e-5)


def test_rotation_random_labels_cover_all_classes_in_3d_default():
    method = Rotation(tiny_backbone(3), RotationOptions(), **KW)
    assert not method.all_rotations and method.n_classes == 10
    torch.manual_seed(0)
    _, labels = method.pretext(torch.rand(64, 1, 16, 16, 16))
    assert set(labels.tolist()) == set(range(10))


def test_rotation_rejects_non_square_inputs():
    assert "square" in Rotation.unsupported(create_backbone("resnet_tiny", 1, (16, 24)))
    assert Rotation.unsupported(tiny_backbone(2)) is None


# --- jigsaw / Rubik's cube ----------------------------------------------------------------------------------------
def test_permutation_set_is_deterministic_distinct_and_far_apart():
    perms = hamming_permutations(9, 100, 0)
    assert perms.shape == (100, 9) and len({tuple(p) for p in perms}) == 100
    assert all(sorted(p) == list(range(9)) for p in perms)
    hamming_permutations.cache_clear()
    assert np.array_equal(hamming_permutations(9, 100, 0), perms)
    assert min_pairwise_hamming(perms) == MIN_HAMMING_9_100 >= 6
    rng = np.random.default_rng(0)  # 100 random permutations of 9 are much closer (typically 2-3)
    random_min = max(min_pairwise_hamming(np.array([rng.permutation(9) for _ in range(100)])) for _ in range(5))
    assert random_min < MIN_HAMMING_9_100
    assert not np.array_equal(hamming_permutations(8, 100, 1), hamming_permutations(8, 100, 0))


def test_permutation_set_matches_a_brute_force_greedy_max_min_selection():
    n, k = 4, 8
    perms = hamming_permutations(n, k, 0)
    everything = list(itertools.permutations(range(n)))
    dist = lambda a, b: sum(x != y for x, y in zip(a, b))  # noqa: E731
    chosen = [tuple(perms[0])]
    for _ in range(k - 1):
        rest = [p for p in everything if p not in chosen]
        chosen.append(max(rest, key=lambda p: (min(dist(p, c) for c in chosen), sum(dist(p, c) for c in chosen),
                                               -everything.index(p))))
    assert [tuple(p) for p in perms] == chosen
    assert min_pairwise_hamming(perms) == min(dist(a, b) for a, b in itertools.combinations(chosen, 2))


def test_too_many_tiles_or_permutations_are_config_errors():
    with pytest.raises(ConfigError, match="too many"):
        hamming_permutations(27, 100)
    with pytest.raises(ConfigError, match="n_permutations"):
        hamming_permutations(3, 7)


@pytest.mark.parametrize("spatial_dims,grid", [(2, 3), (3, 2)])
def test_tiles_shuffle_and_unshuffle_restore_the_image(spatial_dims, grid):
    torch.manual_seed(0)
    x = torch.rand(4, 2, *(grid * 3,) * spatial_dims)
    tiles = to_tiles(x, grid)
    assert tiles.shape == (4, grid ** spatial_dims, 2, *(3,) * spatial_dims)
    second = (slice(None), slice(None)) + (slice(0, 3),) * (spatial_dims - 1) + (slice(3, 6),)
    assert torch.equal(tiles[:, 1], x[second])  # raster order: the last axis runs fastest
    assert torch.equal(from_tiles(tiles, grid), x)
    perms = torch.from_numpy(hamming_permutations(grid ** spatial_dims, 10))[torch.tensor([0, 3, 7, 9])]
    shuffled = shuffle_tiles(tiles, perms)
    assert torch.equal(shuffled[2, 0], tiles[2, perms[2, 0]])
    assert not torch.equal(shuffled, tiles) and torch.equal(unshuffle_tiles(shuffled, perms), tiles)
    crops = random_crop_tiles(tiles, (2,) * spatial_dims)
    assert crops.shape == (4, grid ** spatial_dims, 2, *(2,) * spatial_dims)
    # every crop is a contiguous window of its own tile
    t, c = tiles[1, 3, 0], crops[1, 3, 0]
    windows = [t[tuple(slice(o, o + 2) for o in offs)] for offs in itertools.product(range(2), repeat=spatial_dims)]
    assert any(torch.equal(w, c) for w in windows)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_jigsaw_loss_is_cross_entropy_over_the_permutation_set(spatial_dims):
    method = Jigsaw(tiny_backbone(spatial_dims, 16 if spatial_dims == 3 else 24),
                    JigsawOptions(n_permutations=20, tile_dim=16, hidden_dim=32), **KW)
    assert method.n_tiles == (9 if spatial_dims == 2 else 8)
    images = torch.rand(4, 1, *method.input_size)
    torch.manual_seed(1)
    logits, labels = method.predict(images)
    assert logits.shape == (4, 20)
    torch.manual_seed(1)
    assert torch.allclose(method.ssl_loss(images), hand_cross_entropy(logits, labels), atol=1e-5)


def test_jigsaw_resizes_tiles_for_fixed_size_backbones():
    vit = create_backbone("vit_micro", 1, 16)
    method = Jigsaw(vit, JigsawOptions(n_permutations=10, tile_dim=8, hidden_dim=16), **KW)
    assert method.tile_input == (16, 16)
    assert torch.isfinite(method.ssl_loss(torch.rand(2, 1, 16, 16)))
    unet = create_backbone("unet_tiny_3d", 1, 32)
    method = Jigsaw(unet, JigsawOptions(n_permutations=10, tile_dim=8, hidden_dim=16), **KW)
    assert method.tile_input == (32, 32, 32)  # 4 down stages + instance norm need 32 voxels; tiles are 14
    assert torch.isfinite(method.ssl_loss(torch.rand(2, 1, 32, 32, 32)))


# --- learning -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,spatial_dims", [("rotation", 2), ("rotation", 3), ("jigsaw", 2), ("jigsaw", 3)])
def test_predictive_loss_goes_down(name, spatial_dims, fixed_batch_losses):
    L.seed_everything(0, verbose=False)
    if name == "rotation":
        method = Rotation(tiny_backbone(spatial_dims), RotationOptions(), **KW)
    else:
        method = Jigsaw(tiny_backbone(spatial_dims), JigsawOptions(n_permutations=10, tile_dim=32, hidden_dim=64), **KW)
    images = torch.rand(8, 1, *(16,) * spatial_dims)
    losses = fixed_batch_losses(method, images)
    assert losses[-1] < losses[0] and sum(losses[-3:]) < sum(losses[:3])


# --- multi-SSL ----------------------------------------------------------------------------------------------------
def make_multi(spatial_dims=2, methods=None):
    options = MultiSSLOptions(**({"methods": methods} if methods else {}))
    return MultiSSL(tiny_backbone(spatial_dims), options, **KW)


def test_multi_ssl_shares_one_backbone_and_optimises_it_once():
    method = make_multi()
    assert list(method.methods) == ["simclr", "rotation"]
    for sub in method.methods.values():
        assert sub.backbone is method.backbone
        assert all(a is b for a, b in zip(sub.backbone.parameters(), method.backbone.parameters()))
    params = [p for p in method.parameters() if p.requires_grad]
    assert len(params) == len({id(p) for p in params})
    backbone_ids = {id(p) for p in method.backbone.parameters()}
    assert sum(id(p) in backbone_ids for p in params) == len(backbone_ids)
    head_ids = {id(p) for sub in method.methods.values() for n, p in sub.named_parameters()
                if not n.startswith("backbone.")}
    assert head_ids and head_ids <= {id(p) for p in params}

    class FakeTrainer:
        estimated_stepping_batches, max_epochs = 10, 1

    module = PretrainModule(method, lr=1e-3, weight_decay=0.0, epochs=1, warmup_epochs=0)
    module._trainer = FakeTrainer()  # configure_optimizers only reads these two numbers
    try:
        opt = module.configure_optimizers()["optimizer"]
    finally:
        module._trainer = None
    in_opt = [p for group in opt.param_groups for p in group["params"]]
    assert len(in_opt) == len({id(p) for p in in_opt}) == len(params)


def test_multi_ssl_loss_is_the_weighted_sum_of_partial_losses():
    method = make_multi(methods=[{"name": "simclr", "weight": 0.3}, {"name": "rotation", "weight": 2.0},
                                 {"name": "rotation", "weight": 0.5, "options": {"hidden_dim": 8}}])
    assert list(method.methods) == ["simclr", "rotation_1", "rotation_2"]
    images = torch.rand(8, 1, 16, 16)
    torch.manual_seed(4)
    partials = method.partial_losses(images)
    torch.manual_seed(4)
    total = method.ssl_loss(images)
    expected = 0.3 * partials["simclr"] + 2.0 * partials["rotation_1"] + 0.5 * partials["rotation_2"]
    assert torch.allclose(total, expected, atol=1e-5)
    assert all(torch.allclose(method.last_partials[k], v, atol=1e-6) for k, v in partials.items())


def test_multi_ssl_loss_goes_down(fixed_batch_losses):
    L.seed_everything(0, verbose=False)
    method = make_multi()
    losses = fixed_batch_losses(method, torch.rand(8, 1, 16, 16))
    assert losses[-1] < losses[0] and sum(losses[-3:]) < sum(losses[:3])


def multi_cfg(methods):
    return validate_config({"method": "multi_ssl", "data": {"name": "synthetic2d", "n_train": 8, "size": 16},
                            "method_options": {"methods": methods}}, PretrainConfig)


@pytest.mark.parametrize("methods,pattern", [
    ([{"name": "simclr"}, {"name": "rotatoin"}], r"methods\.1\.name.*rotatoin.*allowed.*rotation"),
    ([{"name": "simclr"}, {"name": "rotation", "options": {"hiden_dim": 3}}],
     r"methods\.1.*'rotation'.*options\.hiden_dim.*hidden_dim"),
    ([{"name": "simclr", "options": {"temperature": -1}}, {"name": "rotation"}],
     r"methods\.0.*'simclr'.*options\.temperature.*-1"),
    ([{"name": "simclr"}], r"methods.*at least 2"),
    ([{"name": "simclr"}, {"name": "multi_ssl"}], r"unknown sub-method 'multi_ssl'"),
])
def test_multi_ssl_bad_sub_methods_are_config_errors_naming_them(methods, pattern):
    with pytest.raises(ConfigError, match=pattern):
        check_options(multi_cfg(methods))


def test_multi_ssl_unsupported_is_the_first_sub_method_problem():
    non_square = create_backbone("resnet_tiny", 1, (16, 24))
    problem = MultiSSL.unsupported(non_square)
    assert "rotation" in problem and "square" in problem
    assert MultiSSL.unsupported(tiny_backbone(2)) is None
    with pytest.raises(ConfigError, match="rotation"):
        MultiSSL(non_square, MultiSSLOptions(), **KW)


# --- the whole pipeline ------------------------------------------------------------------------------------------
# Every registered method also goes through ``pretrain`` and ``run`` in tests/pretrain/test_zoo.py; here multi-SSL's
# extra logging.
@pytest.mark.parametrize("name,spatial_dims", [("multi_ssl", 3)])
def test_pretrain_writes_a_checkpoint_and_logs_partial_losses(tmp_path, name, spatial_dims):
    data = {"name": f"synthetic{spatial_dims}d", "n_train": 64, "n_val": 16, "n_test": 16, "size": 16}
    backbone = {"name": "resnet_tiny"} if spatial_dims == 2 else {"name": "resnet_tiny_3d", "small_stem": True}
    cfg = validate_config({"method": name, "data": data, "backbone": backbone, "epochs": 1, "batch_size": 32},
                          PretrainConfig)
    path = pretrain(cfg, tmp_path)
    meta = read_metadata(path)
    assert meta["method"] == name and meta["family"] == METHODS[name].family
    assert np.isfinite(meta["final_loss"])
    if name == "multi_ssl":
        logged = pd.read_csv(tmp_path / "metrics.csv")
        for column in ("pretrain/loss", "pretrain/simclr_loss", "pretrain/rotation_loss"):
            assert logged[column].notna().sum() == 1


@pytest.mark.skipif("models_genesis" not in METHODS, reason="restorative methods not registered yet")
def test_multi_ssl_combines_contrastive_and_restorative_like_pcrl():
    method = make_multi(2, methods=[{"name": "simclr"}, {"name": "models_genesis", "weight": 0.5}])
    assert sum(1 for _ in method.parameters()) == len({id(p) for p in method.parameters()})
    images = torch.rand(4, 1, 16, 16)
    torch.manual_seed(2)
    partials = method.partial_losses(images)
    torch.manual_seed(2)
    assert torch.allclose(method.ssl_loss(images), partials["simclr"] + 0.5 * partials["models_genesis"], atol=1e-5)
