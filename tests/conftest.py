"""Test-session settings.

One thread for torch's CPU kernels in every test: many tests run loader workers or child
processes beside the model, and on a 2-core machine OpenMP threads that spin while waiting for a
core made such tests several times slower than on one thread. The count is put back to one after
each test, since `torso train` run in-process sets its own.
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)
