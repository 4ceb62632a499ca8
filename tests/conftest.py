"""Session-wide test set-up: no test may write into the user's real cache (~/.cache/medtransfer), Ray stays on
loopback (its node address is read when Ray is imported, so it is set before any test module imports it), and
modules of tiny models can ask for one torch thread."""

import os

import pytest
import torch

for _key, _value in {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
                     "RAY_USAGE_STATS_ENABLED": "0"}.items():
    os.environ.setdefault(_key, _value)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own empty cache root, so cached datasets never leak between tests or into ``~``."""
    monkeypatch.setenv("MEDTRANSFER_CACHE", str(tmp_path_factory.mktemp("medtransfer-cache")))


@pytest.fixture(autouse=True)
def _fresh_datasets():
    """Tests write files and load them: each starts without datasets loaded by an earlier test."""
    from medtransfer.data import forget_loaded_datasets

    forget_loaded_datasets()
    yield
    forget_loaded_datasets()


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny models: they gain nothing from more, and on busy shared cores OpenMP
    spinning made them 10-40x slower; restored afterwards so other modules keep their setting. Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
