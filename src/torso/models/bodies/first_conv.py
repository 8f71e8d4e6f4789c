"""Inputs with other than three channels: adapt the first convolution, keep its knowledge."""

from __future__ import annotations

import math

import torch
from torch import nn

from torso.errors import TorsoError


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """The first 2-d convolution of `model` in module order, with its dotted name."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    raise TorsoError(f"{type(model).__name__} has no Conv2d to take the input channels")


def adapt_weight(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """A first-conv kernel `(out, 3, k, k)` for `in_channels` inputs.

    1 channel: the sum of the RGB kernels (a grey image then gives the response the RGB image
    gave). n channels: the RGB kernels repeated in order, truncated to n, scaled by 3/n (so a
    constant input gives the same activation as before).
    """
    if in_channels == weight.shape[1]:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = math.ceil(in_channels / weight.shape[1])
    return weight.repeat(1, repeats, 1, 1)[:, :in_channels] * (weight.shape[1] / in_channels)


def adapt_first_conv(model: nn.Module, in_channels: int, *, pretrained: bool) -> None:
    """Make `model` take `in_channels` input channels, in place.

    With pretrained weights the kernel is adapted by `adapt_weight`; without, it is freshly
    initialised at its new shape. The bias, if any, is kept: it does not depend on the inputs.
    """
    name, conv = first_conv(model)
    if conv.in_channels == in_channels:
        return
    if conv.groups != 1:
        raise TorsoError(f"first convolution {name!r} is grouped; cannot change its input channels")
    with torch.no_grad():
        if pretrained:
            weight = adapt_weight(conv.weight.detach(), in_channels)
        else:
            shape = (conv.out_channels, in_channels, *conv.kernel_size)
            weight = torch.empty(shape, dtype=conv.weight.dtype)
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    conv.weight = nn.Parameter(weight.contiguous())
    conv.in_channels = in_channels
