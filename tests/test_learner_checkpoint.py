"""Training state: the random generators' states come back in the order they were saved."""

from __future__ import annotations

from torso.train.state import cuda_rng_keys


def test_cuda_rng_states_are_restored_in_numeric_gpu_order():
    names = [f"rng.cuda.{index}" for index in (10, 2, 0, 1, 11)] + ["rng.torch", "rng.numpy"]
    assert cuda_rng_keys(names) == [f"rng.cuda.{index}" for index in (0, 1, 2, 10, 11)]
