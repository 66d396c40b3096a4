import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _float64_default():
    old = torch.get_default_dtype()
    yield
    torch.set_default_dtype(old)
