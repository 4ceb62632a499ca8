"""Per-step and per-epoch behaviour is the method's own: momentum encoders (BYOL, MoCo v2, DINO), DINO's teacher-
temperature warm-up and last-layer freeze, SwAV's first-epoch prototype freeze. The one driver (PretrainModule)
runs them the same way for a method alone and for the same method inside multi_ssl, where Lightning's hooks reach
only the top-level module."""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from medtransfer.models.factory import create_backbone
from medtransfer.pretrain import METHODS
from medtransfer.pretrain.dino import teacher_temperature
from medtransfer.pretrain.module import PretrainModule
from medtransfer.pretrain.momentum import scheduled_momentum
from medtransfer.pretrain.multi_ssl import MultiSSL, MultiSSLOptions

SMALL = {"moco_v2": {"hidden_dim": 32, "output_dim": 16, "queue_size": 32},
         "byol": {"hidden_dim": 32, "output_dim": 16},
         "dino": {"hidden_dim": 32, "bottleneck_dim": 16, "output_dim": 64},
         "swav": {"hidden_dim": 32, "output_dim": 16, "n_prototypes": 8}}
PARTNER = {"name": "rotation", "options": {"augment": False, "all_rotations": False}}
EPOCHS, N_IMAGES, BATCH = 2, 16, 8
STEPS = EPOCHS * N_IMAGES // BATCH


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def watched(method) -> dict[str, list[torch.nn.Parameter]]:
    """The parameters whose updates are scheduled: momentum twins (of trained parameters; a frozen one, such as the
    weight norm of DINO's last layer, has nothing to follow), DINO's student last layer, SwAV's prototypes."""
    params = {f"twin{i}": [t for o, t in zip(online.parameters(), twin.parameters()) if o.requires_grad]
              for i, (online, twin) in enumerate(getattr(method, "momentum_pairs", list)())}
    if hasattr(method, "student_head"):
        params["last_layer"] = list(method.student_head.last_layer.parameters())
    if hasattr(method, "prototypes"):
        params["prototypes"] = list(method.prototypes.parameters())
    return params


class Recorder(L.Callback):
    """Before every step: the schedule state and a copy of the watched parameters. They reflect the previous step's
    ``after_step`` and this epoch's ``on_epoch``."""

    def __init__(self, method):
        self.method, self.states, self.params = method, [], []

    def snapshot(self):
        self.states.append({k: getattr(self.method, k) for k in ("momentum", "teacher_temp", "prototypes_frozen")
                            if hasattr(self.method, k)})
        self.params.append({name: [p.detach().clone() for p in params]
                            for name, params in watched(self.method).items()})

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.snapshot()

    def on_train_end(self, trainer, pl_module):
        self.snapshot()


def train(name: str, inside_multi: bool) -> Recorder:
    L.seed_everything(0, verbose=False)
    backbone = create_backbone("resnet_tiny", 1, 16)
    if inside_multi:
        options = MultiSSLOptions(methods=[{"name": name, "options": SMALL[name]}, PARTNER])
        method = MultiSSL(backbone, options, n_images=N_IMAGES)
        part = method.methods[name]
    else:
        method = part = METHODS[name](backbone, METHODS[name].Options(**SMALL[name]), n_images=N_IMAGES)
    recorder = Recorder(part)
    images = (torch.rand(N_IMAGES, 1, 16, 16) * 255).to(torch.uint8)
    trainer = L.Trainer(max_epochs=EPOCHS, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[recorder])
    trainer.fit(PretrainModule(method, lr=1e-3, weight_decay=0.0, epochs=EPOCHS, warmup_epochs=0),
                DataLoader(TensorDataset(images), batch_size=BATCH, drop_last=True))
    assert len(recorder.params) == STEPS + 1
    return recorder


def changed(before: list[torch.Tensor], after: list[torch.Tensor], atol: float = 0.0) -> int:
    return sum(not torch.allclose(a, b, rtol=0, atol=atol) for a, b in zip(before, after))


@pytest.fixture(scope="module")
def runs():
    cache = {}

    def get(name, inside_multi):
        if (name, inside_multi) not in cache:
            cache[name, inside_multi] = train(name, inside_multi)
        return cache[name, inside_multi]
    return get


@pytest.mark.parametrize("inside_multi", [False, True])
@pytest.mark.parametrize("name", ["byol", "moco_v2", "dino"])
def test_momentum_twins_move_at_the_scheduled_momentum(runs, name, inside_multi):
    run = runs(name, inside_multi)
    base = METHODS[name].Options(**SMALL[name]).momentum
    # before step 0 the base; before step k + 1 the momentum of step k, cosine to exactly 1.0 at the last one
    assert [s["momentum"] for s in run.states] == [base] + [scheduled_momentum(k, STEPS, base) for k in range(STEPS)]
    assert run.states[-1]["momentum"] == 1.0
    twins = [key for key in run.params[0] if key.startswith("twin")]
    for key in twins:  # every twin parameter has moved by the end (alone, and also inside multi_ssl)
        assert changed(run.params[0][key], run.params[-1][key]) == len(run.params[0][key]), key


def moves(run: Recorder, key: str) -> list[bool]:
    """Per step, whether any parameter of the watched module ``key`` changed."""
    return [changed(a[key], b[key], atol=1e-6) > 0 for a, b in zip(run.params, run.params[1:])]


@pytest.mark.parametrize("name", ["byol", "moco_v2", "dino", "swav"])
def test_schedule_state_is_the_same_function_of_step_and_epoch_alone_and_inside_multi_ssl(runs, name):
    alone, inside = runs(name, False), runs(name, True)
    assert alone.states[0] and alone.states == inside.states
    for key in alone.params[0]:  # the same scheduled parameters move at the same steps
        assert moves(alone, key) == moves(inside, key), key


def test_dino_teacher_temperature_warms_up_per_epoch_and_its_last_layer_is_frozen_in_the_first(runs):
    options = METHODS["dino"].Options(**SMALL["dino"])
    for inside_multi in (False, True):
        run = runs("dino", inside_multi)
        epochs = [k * BATCH // N_IMAGES for k in range(STEPS)]
        # the 30-epoch warm-up is capped at the run's 2 epochs: 0.04 in the first, 0.07 in the second
        assert [s["teacher_temp"] for s in run.states[:-1]] == [teacher_temperature(options, e, EPOCHS)
                                                                 for e in epochs] == [0.04, 0.04, 0.07, 0.07]
        layer = [p["last_layer"] for p in run.params]
        first_epoch_end = N_IMAGES // BATCH
        assert changed(layer[0], layer[first_epoch_end]) == 0  # frozen during epoch 0 (freeze_last_layer_epochs 1)
        assert changed(layer[first_epoch_end], layer[-1]) > 0  # trained in epoch 1


def test_swav_prototypes_are_frozen_in_the_first_epoch_only(runs):
    for inside_multi in (False, True):
        run = runs("swav", inside_multi)
        assert [s["prototypes_frozen"] for s in run.states[:-1]] == [True, True, False, False]
        prototypes = [p["prototypes"] for p in run.params]
        # step 0 projects them onto the unit sphere; after that, no update until epoch 1
        first_epoch_end = N_IMAGES // BATCH
        assert changed(prototypes[1], prototypes[first_epoch_end], atol=1e-6) == 0
        assert changed(prototypes[first_epoch_end], prototypes[-1], atol=1e-5) > 0  # lr 1e-3 steps
