import lightning as L
import pytest

from medtransfer.config import HardwareConfig, TrainConfig
from medtransfer.data.synthetic import synthetic2d
from medtransfer.models.factory import create_backbone


@pytest.fixture(scope="session")
def tiny2d():
    return synthetic2d(size=16, n_train=96, n_val=48, n_test=48, seed=3)


@pytest.fixture
def make_backbone(tiny2d):
    def make(name="resnet_tiny", seed=0, **kw):
        L.seed_everything(seed, verbose=False)
        return create_backbone(name, tiny2d.in_chans, tiny2d.image_size, **kw)
    return make


@pytest.fixture
def fast_train():
    return TrainConfig(epochs=2, batch_size=16, lr=1e-2, schedule="none")


@pytest.fixture
def cpu():
    return HardwareConfig(accelerator="cpu")
