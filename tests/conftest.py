import os

import pytest
import torch

# one intra-op thread per pytest-xdist worker (the workers share the cores), else at most two
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, os.cpu_count() or 1))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """``slow`` is folded into ``integration``: the default run (``-m 'not integration'``) skips both and CI's
    ``-m integration`` run takes both."""
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("integration"):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True)
def _float64_default():
    old = torch.get_default_dtype()
    yield
    torch.set_default_dtype(old)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny runs (many small operations: on a shared 2-core machine a
    second OpenMP thread waiting at every barrier made them 5-30x slower). Use it with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
