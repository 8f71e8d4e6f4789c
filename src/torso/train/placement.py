"""Where a batch lives: on the training device, and for 4-D images in channels_last memory
format when the model runs faster so.

On a GPU channels_last is the default for any model with 2-D convolutions. On a CPU it depends
on the model: it speeds up classification bodies, but for a U-Net (decoders that concatenate
skip connections) it can make the backward convolutions twice as slow. So on a CPU the choice
is measured, not assumed: `probe_channels_last` times a few forward + backward passes each way
on the first training batch and keeps the faster layout, leaving the model, its gradients, its
buffers and the random state as they were (the choice changes results only by float rounding).
The decision is remembered for the process, keyed by the model's class and size, the batch's
shapes, the device and the thread count, so a second Learner of the same kind does not measure
again. `probe_inference_channels_last` decides the same way for inference (`torso embed`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from torso import distributed

#: Timed passes each way in a probe (interleaved: channels_last, default, channels_last, ...).
PROBE_PASSES = 2
#: The clock of a probe; None: with one torch thread the process's CPU time, which other
#: processes' load disturbs far less than the wall clock, else the wall clock (CPU time would
#: not see a layout that keeps fewer threads busy). Tests set their own.
PROBE_CLOCK: Callable[[], float] | None = None
# (model class, parameter count, batch shapes, device, threads, "train" or "inference") -> whether
# channels_last was faster
_DECISIONS: dict[tuple, bool] = {}


def has_convolutions(model: nn.Module) -> bool:
    return any(isinstance(module, nn.Conv2d) for module in model.modules())


def wants_channels_last(
    model: nn.Module, requested: bool | None, device: torch.device | None = None
) -> bool | None:
    """`requested`, if given; False for a model without 2-D convolutions; True on a GPU (or
    under torchrun, where every process must choose alike); None on a CPU: to be measured on
    the first training batch by `probe_channels_last`."""
    if requested is not None:
        return requested
    if not has_convolutions(model):
        return False
    if device is None or device.type != "cpu" or distributed.is_distributed():
        return True
    return None


def choose_memory_format(
    model: nn.Module, requested: bool | None, device: torch.device, compiled: bool = False
) -> bool | None:
    """`wants_channels_last` (a compiled model is not probed: the probe would compile it twice),
    with the model converted to channels_last when that is the answer already."""
    choice = wants_channels_last(model, requested, device)
    if choice is None and compiled:
        choice = True
    if choice:
        model.to(memory_format=torch.channels_last)
    return choice


def _shapes(value: Any) -> tuple:
    if isinstance(value, tuple | list):
        return tuple(_shapes(item) for item in value)
    return tuple(value.shape) if isinstance(value, torch.Tensor) else ()


def probe_channels_last(
    model: nn.Module,
    device: torch.device,
    batch: tuple[Any, Any],
    call: Callable[[Any], torch.Tensor],
    loss: Callable[[torch.Tensor, Any], torch.Tensor],
) -> bool:
    """Whether channels_last trains `model` faster on `batch` (inputs, targets): the faster
    of `PROBE_PASSES` forward (`call`) + `loss` + backward passes each way. The model ends in
    the chosen layout, its gradients, buffers and the random state as they were before."""
    x, y = batch
    target = to_device(y, device, False)

    def train_pass(inputs: Any) -> None:
        loss(call(inputs), target).backward()

    return _decide(model, device, x, train_pass, "train")


def probe_inference_channels_last(model: nn.Module, device: torch.device, x: Any) -> bool:
    """Whether channels_last runs `model` (in eval mode, no gradients) faster on inputs `x`:
    as `probe_channels_last`, for inference. The model ends in the chosen layout."""

    def inference_pass(inputs: Any) -> None:
        with torch.inference_mode():
            model(inputs)

    return _decide(model, device, x, inference_pass, "inference")


def probe_learner_layout(learner: Any, batch: tuple[Any, Any]) -> bool:
    """`probe_channels_last` for a Learner's model, device, forward call and task loss."""
    call, loss = learner._call_model, learner.task.loss
    return probe_channels_last(learner.model, learner.device, batch, call, loss)


def _decide(model: nn.Module, device: torch.device, x: Any, run: Callable, mode: str) -> bool:
    size = sum(parameter.numel() for parameter in model.parameters())
    threads = torch.get_num_threads()
    key = (type(model).__qualname__, size, _shapes(x), device.type, threads, mode)
    if key not in _DECISIONS:
        _DECISIONS[key] = _measure(model, device, x, run)
    choice = _DECISIONS[key]
    model.to(memory_format=torch.channels_last if choice else torch.contiguous_format)
    return choice


def _measure(model: nn.Module, device: torch.device, x: Any, run: Callable) -> bool:
    buffers = [(buffer, buffer.clone()) for buffer in model.buffers()]
    grads = [(parameter, parameter.grad) for parameter in model.parameters()]
    random_state = torch.get_rng_state()
    seconds: dict[bool, list[float]] = {True: [], False: []}
    clock = PROBE_CLOCK or (
        time.process_time if torch.get_num_threads() == 1 else time.perf_counter
    )
    try:
        for _ in range(PROBE_PASSES):
            for layout in (True, False):
                model.to(memory_format=torch.channels_last if layout else torch.contiguous_format)
                inputs = to_device(x, device, layout)
                for parameter, _grad in grads:
                    parameter.grad = None
                start = clock()
                run(inputs)
                seconds[layout].append(clock() - start)
    finally:
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
        for parameter, grad in grads:
            parameter.grad = grad
        torch.set_rng_state(random_state)
    return min(seconds[True]) < min(seconds[False])


def forget_decisions() -> None:
    """Forget the probes' decisions (the next Learner measures again)."""
    _DECISIONS.clear()


def to_device(value: Any, device: torch.device, channels_last: bool) -> Any:
    """`value` (a tensor, or a tuple or list of them, nested) moved to `device`; floating-point
    4-D tensors become channels_last when `channels_last`. Other values pass unchanged."""
    if isinstance(value, tuple | list):
        return type(value)(to_device(item, device, channels_last) for item in value)
    if isinstance(value, torch.Tensor):
        value = value.to(device, non_blocking=True)
        if channels_last and value.ndim == 4 and value.is_floating_point():
            value = value.contiguous(memory_format=torch.channels_last)
    return value


def stored_channels_last(model: nn.Module) -> bool:
    """Whether `model`'s convolution weights are stored channels_last (as a Learner stores them
    by default), so that inputs should be too."""
    return any(
        parameter.ndim == 4
        and not parameter.is_contiguous()
        and parameter.is_contiguous(memory_format=torch.channels_last)
        for parameter in model.parameters()
    )
