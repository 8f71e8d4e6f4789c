"""Test-session settings.

One thread for torch's CPU kernels: many tests run loader workers or child processes beside the
model, and on a 2-core machine OpenMP threads that spin while waiting for a core made such tests
several times slower than on one thread.
"""

import torch

torch.set_num_threads(1)
