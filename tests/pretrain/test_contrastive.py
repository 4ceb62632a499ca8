"""MoCo v2, BYOL, Barlow Twins, SwAV, DINO: each loss is its paper's formula, each method learns in 2D and 3D,
momentum encoders move but stay out of the optimiser, and unknown options fail before training."""

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightly.loss import DINOLoss, SwaVLoss
from lightly.loss.swav_loss import sinkhorn
from torch.utils.data import DataLoader, TensorDataset

from medtransfer.config import PretrainConfig
from medtransfer.config_files import validate_config
from medtransfer.errors import ConfigError
from medtransfer.models.factory import create_backbone
from medtransfer.pretrain import METHODS
from medtransfer.pretrain.barlow_twins import BarlowTwins
from medtransfer.pretrain.byol import BYOL
from medtransfer.pretrain.dino import DINO
from medtransfer.pretrain.moco import MoCo
from medtransfer.pretrain.module import PretrainModule
from medtransfer.pretrain.momentum import update_pairs
from medtransfer.pretrain.run import check_options
from medtransfer.pretrain.swav import SwAV

TINY = {"name": "synthetic2d", "n_train": 64, "n_val": 16, "n_test": 16, "size": 16}
NAMES = {"moco_v2": MoCo, "byol": BYOL, "barlow_twins": BarlowTwins, "swav": SwAV, "dino": DINO}
# small heads so CPU tests stay fast; everything else at the paper defaults
SMALL = {"moco_v2": {"hidden_dim": 64, "output_dim": 32, "queue_size": 64},
         "byol": {"hidden_dim": 64, "output_dim": 32},
         "barlow_twins": {"hidden_dim": 64, "output_dim": 64},
         "swav": {"hidden_dim": 64, "output_dim": 32, "n_prototypes": 16},
         "dino": {"hidden_dim": 64, "bottleneck_dim": 32, "output_dim": 128}}


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def make(name, spatial_dims=2, backbone="resnet_tiny", n_images=None, **options):
    if spatial_dims == 3 and backbone == "resnet_tiny":
        backbone = "resnet_tiny_3d"
    net = create_backbone(backbone, 1, 16, small_stem=spatial_dims == 3, spatial_dims=spatial_dims)
    cls = METHODS[name]
    return cls(net, cls.Options(**{**SMALL[name], **options}), views={}, n_images=n_images)


# --- losses against the papers' formulas ---------------------------------------------------------------------------
def test_moco_loss_is_infonce_against_a_known_queue_which_then_receives_the_keys():
    torch.manual_seed(0)
    method = make("moco_v2", temperature=0.2, queue_size=16, output_dim=8)
    queue = F.normalize(torch.randn(16, 8), dim=1)
    method.criterion.memory_bank.bank = queue.clone()
    q, k = torch.randn(6, 8, requires_grad=True), torch.randn(6, 8)
    qn, kn = F.normalize(q, dim=1), F.normalize(k, dim=1)
    # MoCo eq. 1: -log exp(q.k+/t) / (exp(q.k+/t) + sum_queue exp(q.k-/t))
    logits = torch.cat([(qn * kn).sum(1, keepdim=True), qn @ queue.T], dim=1) / 0.2
    reference = -(logits[:, 0] - torch.logsumexp(logits, dim=1)).mean()
    assert torch.allclose(method.criterion(q, k), reference, atol=1e-5)
    assert torch.allclose(method.criterion.memory_bank.bank[:6], kn, atol=1e-6)  # enqueued
    assert torch.equal(method.criterion.memory_bank.bank[6:], queue[6:])


def test_byol_loss_is_symmetric_two_minus_two_cosine():
    torch.manual_seed(0)
    p0, p1, z0, z1 = (torch.randn(8, 16) for _ in range(4))

    def term(p, z):  # BYOL eq. 2: || p/|p| - z/|z| ||^2
        return ((F.normalize(p, dim=1) - F.normalize(z, dim=1)) ** 2).sum(1).mean()

    reference = term(p0, z1) + term(p1, z0)
    assert torch.allclose(make("byol").loss(p0, p1, z0, z1), reference, atol=1e-5)
    assert torch.allclose(reference, (2 - 2 * F.cosine_similarity(p0, z1)).mean()
                          + (2 - 2 * F.cosine_similarity(p1, z0)).mean(), atol=1e-5)


def test_barlow_twins_loss_is_the_cross_correlation_objective():
    torch.manual_seed(0)
    za, zb = torch.randn(16, 12), torch.randn(16, 12) * 3 + 1
    lam = 0.02

    def standardise(z):  # along the batch, biased std (as batch norm)
        return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + 1e-5)

    c = standardise(za).T @ standardise(zb) / len(za)
    off = c - torch.diag(torch.diagonal(c))
    reference = ((1 - torch.diagonal(c)) ** 2).sum() + lam * (off ** 2).sum()
    assert torch.allclose(make("barlow_twins", lambda_param=lam).criterion(za, zb), reference, rtol=1e-4)
    assert make("barlow_twins").options.lambda_param == 5e-3


def test_swav_loss_is_swapped_prediction_of_sinkhorn_codes():
    torch.manual_seed(0)
    method = make("swav", temperature=0.2, sinkhorn_epsilon=0.1, sinkhorn_iterations=4)
    s0, s1 = torch.randn(8, 16) * 0.3, torch.randn(8, 16) * 0.3
    lightly_loss = SwaVLoss(temperature=0.2, sinkhorn_iterations=4, sinkhorn_epsilon=0.1)([s0, s1], [])
    q0, q1 = sinkhorn(s0, 4, 0.1), sinkhorn(s1, 4, 0.1)
    assert torch.allclose(q0.sum(1), torch.ones(8), atol=1e-5)  # each sample's code is a distribution
    # SwAV eq. 3: each view predicts the other's code, cross-entropy against softmax(scores / temperature)
    reference = 0.5 * (-(q0 * F.log_softmax(s1 / 0.2, dim=1)).sum(1).mean()
                       - (q1 * F.log_softmax(s0 / 0.2, dim=1)).sum(1).mean())
    got = method.criterion([s0, s1], [])
    assert torch.allclose(got, lightly_loss) and torch.allclose(got, reference, atol=1e-5)


def test_swav_prototypes_are_normalised_every_step_and_frozen_in_the_first_epoch():
    torch.manual_seed(0)
    method = make("swav")
    method.prototypes.heads[0].weight.data.mul_(3)
    method.ssl_loss(torch.rand(8, 1, 16, 16)).backward()
    assert torch.allclose(method.prototypes.heads[0].weight.norm(dim=1), torch.ones(16), atol=1e-5)
    assert method.prototypes.heads[0].weight.grad is not None
    method.on_epoch(0, 2)
    method.after_backward()  # epoch 0 < freeze_prototypes_epochs = 1
    assert all(p.grad is None for p in method.prototypes.parameters())
    assert method.projection.layers[0].weight.grad is not None
    method.ssl_loss(torch.rand(8, 1, 16, 16)).backward()
    method.on_epoch(1, 2)
    method.after_backward()
    assert all(p.grad is not None for p in method.prototypes.parameters())


def test_dino_loss_centres_and_sharpens_the_teacher_with_the_configured_temperatures():
    torch.manual_seed(0)
    method = make("dino", output_dim=6)
    t = [torch.randn(4, 6), torch.randn(4, 6)]
    s = [torch.randn(4, 6), torch.randn(4, 6)]
    center = torch.randn(1, 1, 6) * 0.1
    method.criterion.center.copy_(center)

    def reference(t_temp):  # DINO eq. 1-4: H(P_t(other view), P_s) over cross-view pairs, teacher centred
        pt = [F.softmax((x - center[0]) / t_temp, dim=1) for x in t]
        ls = [F.log_softmax(x / 0.1, dim=1) for x in s]
        return 0.5 * (-(pt[0] * ls[1]).sum(1).mean() - (pt[1] * ls[0]).sum(1).mean())

    def loss_at(epoch):  # a 10-epoch run: the 30-epoch warm-up is capped at the 10 of the run
        method.criterion.center.copy_(center)
        method.on_epoch(epoch, 10)
        return method.criterion(t, s, teacher_temp=method.teacher_temp)

    assert torch.allclose(loss_at(0), reference(0.04), atol=1e-5)  # warm-up starts at 0.04
    # centre: EMA with momentum 0.9 of the teacher batch mean
    assert torch.allclose(method.criterion.center, 0.9 * center + 0.1 * torch.stack(t).mean((0, 1)), atol=1e-6)
    assert torch.allclose(loss_at(9), reference(0.07), atol=1e-5)  # reaches 0.07 by the end
    lightly = DINOLoss(output_dim=6, warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=10,
                       student_temp=0.1, center_momentum=0.9)
    lightly.center.copy_(center)
    for epoch in (4, 12):  # during and after the warm-up, lightly's epoch schedule
        lightly.center.copy_(center)
        assert torch.allclose(loss_at(epoch), lightly(t, s, epoch=epoch))


# --- learning ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("name", list(NAMES))
def test_loss_goes_down_on_a_fixed_batch(name, spatial_dims, fixed_batch_losses):
    L.seed_everything(0, verbose=False)
    method = make(name, spatial_dims)
    queue = getattr(method.criterion, "memory_bank", None)
    negatives = queue.bank.clone() if queue is not None else None
    images = torch.rand(8, 1, *(16,) * spatial_dims)
    # MoCo: keep the negatives fixed too; on one fixed batch the queue would fill with its own positives
    reset_queue = (lambda: queue.bank.copy_(negatives)) if queue is not None else None
    update = (lambda: update_pairs(method.momentum_pairs(), 0.99)) if hasattr(method, "momentum_pairs") else None
    losses = fixed_batch_losses(method, images, before_step=reset_queue, after_step=update)
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("backbone,spatial_dims", [("vit_micro", 2), ("unet_tiny_3d", 3)])
@pytest.mark.parametrize("name", list(NAMES))
def test_works_on_vit_and_unet_encoders(name, backbone, spatial_dims):
    size = 16 if spatial_dims == 2 else 32  # the U-Net encoder downsamples 16x
    net = create_backbone(backbone, 1, size, spatial_dims=spatial_dims)
    cls = METHODS[name]
    method = cls(net, cls.Options(**SMALL[name]), views={})
    assert method.unsupported(method.backbone) is None
    torch.manual_seed(0)
    loss = method.ssl_loss(torch.rand(4, 1, *(size,) * spatial_dims))
    loss.backward()
    assert torch.isfinite(loss) and any(p.grad is not None for p in method.backbone.parameters())


# --- momentum encoders ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["moco_v2", "byol", "dino"])
def test_momentum_encoder_moves_stays_out_of_the_optimiser_and_the_online_backbone_is_saved(name):
    L.seed_everything(0, verbose=False)
    options = {"moco_v2": {"queue_size": 4096}, "dino": {"freeze_last_layer_epochs": 0}}.get(name, {})
    method = make(name, **options)
    pairs = method.momentum_pairs()
    online = method.backbone
    twins = [twin for _, twin in pairs]
    before = [{k: v.clone() for k, v in twin.state_dict().items()} for twin in twins]
    images = (torch.rand(24, 1, 16, 16) * 255).to(torch.uint8)
    # 3 steps: the momentum schedule reaches 1.0 at the last one, and the first moves nothing inside residual
    # branches (their last BN starts at zero), so the second is the one that shows every weight moving
    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(PretrainModule(method, lr=1e-3, weight_decay=0.0, epochs=1, warmup_epochs=0),
                DataLoader(TensorDataset(images), batch_size=8, drop_last=True))
    in_optimiser = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    for (student, twin), init in zip(pairs, before):
        for p, (k, v) in zip(student.parameters(), twin.named_parameters()):
            assert not p.requires_grad or not torch.equal(init[k], v), k  # everything trained has moved
        assert not any(id(p) in in_optimiser for p in twin.parameters())
        assert not any(p.requires_grad for p in twin.parameters())
    assert method.backbone is online and all(id(p) in in_optimiser for p in online.parameters())
    # the online and momentum backbones have parted ways: the one saved (``backbone``) is the trained one
    twin_backbone = twins[0]
    assert not torch.equal(next(online.parameters()), next(twin_backbone.parameters()))


def test_moco_queue_is_capped_at_the_number_of_training_images():
    assert make("moco_v2", queue_size=4096, n_images=24).criterion.memory_bank.size[0] == 24
    assert make("moco_v2", queue_size=16, n_images=24).criterion.memory_bank.size[0] == 16
    assert make("moco_v2", queue_size=4096).criterion.memory_bank.size[0] == 4096  # size unknown: as configured


# --- configuration -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(NAMES))
def test_unknown_option_is_a_config_error_naming_it(name):
    cfg = validate_config({"method": name, "data": TINY, "method_options": {"tempreture": 0.1}}, PretrainConfig)
    with pytest.raises(ConfigError, match="tempreture"):
        check_options(cfg)
    cfg = validate_config({"method": name, "data": TINY}, PretrainConfig)
    assert isinstance(check_options(cfg), NAMES[name].Options)


def test_registry_lists_the_contrastive_methods():
    for name, cls in NAMES.items():
        assert METHODS[name] is cls and cls.family == "contrastive"
