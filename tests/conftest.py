"""Session-wide test set-up: no test may write into the user's real cache (~/.cache/medtransfer)."""

import pytest


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own empty cache root, so cached datasets never leak between tests or into ``~``."""
    monkeypatch.setenv("MEDTRANSFER_CACHE", str(tmp_path_factory.mktemp("medtransfer-cache")))
