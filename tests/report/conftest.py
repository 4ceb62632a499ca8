"""Shared fixture: the toy experiment of toy_experiment.py, written once per test session."""

import pytest
from toy_experiment import write_experiment


@pytest.fixture(scope="session")
def experiment(tmp_path_factory):
    """(folder, rows of all runs) of the standard grid."""
    folder = tmp_path_factory.mktemp("experiment")
    return folder, write_experiment(folder).rows(status=None)
