"""Where a batch lives: on the training device, and for 4-D images in channels_last memory
format when the model uses it (convolutions run faster so on GPUs and recent CPUs)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def wants_channels_last(model: nn.Module, requested: bool | None) -> bool:
    """`requested`, or by default whether `model` has 2-D convolutions."""
    if requested is not None:
        return requested
    return any(isinstance(module, nn.Conv2d) for module in model.modules())


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
