"""DistributedDataParallel for the training loop, under torchrun.

`Parallel.module(x, call)` gives the module a training batch goes through: the model itself in
one process; under torchrun a `DistributedDataParallel` around it, built on first use and again
after `reset()` (DDP registers only the parameters that train, so a change of freezing needs a
new one). `Parallel.exchange(stepping)` wraps forward and backward: while gradients only
accumulate (`stepping` False) processes skip their exchange (`no_sync`), and a broken process
group surfaces as `distributed.CollectiveError`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from torso import distributed


class Parallel:
    """Data parallelism of `model` on `device` (nothing to do when not distributed).

    `compile`: the DDP module runs through `torch.compile`.
    """

    def __init__(self, model: nn.Module, device: torch.device, *, compile: bool = False) -> None:
        self.model = model
        self.device = device
        self.compile = compile
        self.active = distributed.is_distributed()
        self._ddp: nn.Module | None = None
        self._wrapped: nn.Module | None = None

    def reset(self) -> None:
        """Forget the DDP module: the set of trainable parameters changed."""
        self._ddp = self._wrapped = None

    def module(self, x: Any, call: Callable[[Any, nn.Module], torch.Tensor]) -> nn.Module | None:
        """The DDP module for training batch `x`, or None when not distributed.

        `call(x, module)` runs a forward pass (it is used once, on two samples, to learn whether
        some trainable parameter takes no part in it; see `has_unused_parameters`).
        """
        if not self.active:
            return None
        if self._wrapped is None:
            from torch.nn.parallel import DistributedDataParallel

            unused = has_unused_parameters(self.model, x, call)
            ids = [self.device.index] if self.device.type == "cuda" else None
            with distributed.collective():  # DDP broadcasts the main process's weights
                self._ddp = DistributedDataParallel(
                    self.model, device_ids=ids, find_unused_parameters=unused
                )
            self._wrapped = torch.compile(self._ddp) if self.compile else self._ddp
        return self._wrapped

    @contextmanager
    def exchange(self, stepping: bool) -> Iterator[None]:
        """Context for one batch's forward and backward pass (see the module docstring)."""
        if self._ddp is None:
            yield
            return
        with distributed.collective():
            if stepping:
                yield
            else:
                with self._ddp.no_sync():
                    yield


def has_unused_parameters(
    model: nn.Module, x: Any, call: Callable[[Any, nn.Module], torch.Tensor]
) -> bool:
    """Whether a trainable parameter of `model` takes no part in the forward pass of (two
    samples of) batch `x`, e.g. a norm layer of a backbone's classifier that a body keeps. DDP
    must then look for such parameters every step, which costs time, so only when needed.

    The model runs in eval mode (the same parameters take part; no running statistics change);
    each module's mode is put back afterwards.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    sample = type(x)(item[:2] for item in x) if isinstance(x, tuple | list) else x[:2]
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        outputs = call(sample, model)
        grads = torch.autograd.grad(outputs.float().sum(), trainable, allow_unused=True)
    finally:
        for module, training in modes:
            module.training = training
    return any(grad is None for grad in grads)


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` with SyncBatchNorm layers (statistics over the global batch) under torchrun; the
    model as it is in one process, where BatchNorm already sees the whole batch. Needs GPUs."""
    if not distributed.is_distributed():
        return model
    if device.type != "cuda":
        from torso.errors import TorsoError

        raise TorsoError(
            "sync_batchnorm (--sync-bn) needs one GPU per process: PyTorch's SyncBatchNorm "
            "does not run on CPUs"
        )
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)
