"""A model is `nn.Sequential(body, head)`: creating one, its parameter groups, freezing.

`model[0]` is the body and `model[1]` the head, as in fastai; decoders (segmentation) and pair
models follow the same two-part shape, so groups and freezing need no special cases.

BatchNorm policy when the body is frozen (`train_bn=True`, the default, as in fastai): the body's
normalisation layers keep their parameters trainable and their running statistics updating, which
lets a pretrained body adapt to new data's statistics while its weights stay fixed. With
`train_bn=False` (smp's `freeze_encoder` behaviour) they are frozen too; `set_frozen_norm_eval`
then keeps them in eval mode so their running statistics stay those of the pretrained weights.
"""

from __future__ import annotations

import torch
from torch import nn

from torso.errors import TorsoError
from torso.models.bodies import Body, create_body
from torso.models.bodies.weights import Pretrained
from torso.models.heads import create_head

NORM_TYPES = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LayerNorm,
    nn.GroupNorm,
)


def create_model(
    backbone: str | nn.Module | Body,
    num_outputs: int,
    *,
    pretrained: Pretrained = False,
    in_channels: int = 3,
    cut=None,
    **head_options,
) -> nn.Sequential:
    """`nn.Sequential(body, head)` for `num_outputs` outputs.

    backbone: a name or module for `create_body`, or a ready Body. The head's input width is read
    from a dummy forward pass of the body, never from a table. `head_options` go to `create_head`
    (hidden, dropout, pool, concat_pool, first_bn, bn_final, lin_first, y_range).
    Input `(N, in_channels, H, W)` in [0, 1] → output `(N, num_outputs)`.
    """
    if num_outputs < 1:
        raise TorsoError(f"num_outputs must be at least 1, not {num_outputs}")
    body = (
        backbone
        if isinstance(backbone, Body)
        else create_body(backbone, pretrained=pretrained, in_channels=in_channels, cut=cut)
    )
    head = create_head(feature_width(body), num_outputs, **head_options)
    return nn.Sequential(body, head)


@torch.no_grad()
def feature_width(body: nn.Module, in_channels: int | None = None) -> int:
    """Channels of `body`'s output, measured by a dummy forward pass (64, 128, 256 px)."""
    channels = in_channels or getattr(body, "in_channels", 3)
    was_training = body.training
    body.eval()
    try:
        error: Exception | None = None
        for size in (64, 128, 256):
            try:
                return int(body(torch.zeros(1, channels, size, size)).shape[1])
            except RuntimeError as exc:
                error = exc
        raise TorsoError(f"the body does not accept {channels}-channel images: {error}")
    finally:
        body.train(was_training)


def param_groups(model: nn.Module) -> list[list[nn.Parameter]]:
    """Parameter groups for discriminative learning rates: the body's groups, then the rest.

    For `nn.Sequential(body, head)` that is body groups + [head]. Every parameter is in exactly
    one group.
    """
    body = model[0]
    groups = body.groups() if isinstance(body, Body) else [list(body.parameters())]
    seen = {id(p) for group in groups for p in group}
    rest = [p for p in model.parameters() if id(p) not in seen]
    return [group for group in groups if group] + ([rest] if rest else [])


def freeze_to(model: nn.Module, n: int, *, train_bn: bool = True) -> None:
    """Train only groups `[n:]` (negative n counts from the end); groups `[:n]` are frozen.

    With train_bn, normalisation layers in frozen groups stay trainable (see module docstring).
    """
    groups = param_groups(model)
    n = n % len(groups) if n < 0 else min(n, len(groups))
    norm_params = (
        {id(p) for m in model.modules() if isinstance(m, NORM_TYPES) for p in m.parameters()}
        if train_bn
        else set()
    )
    for index, group in enumerate(groups):
        for p in group:
            p.requires_grad_(index >= n or id(p) in norm_params)


def freeze(model: nn.Module, *, train_bn: bool = True) -> None:
    """Train the head only (and, with train_bn, the body's normalisation layers)."""
    freeze_to(model, -1, train_bn=train_bn)


def unfreeze(model: nn.Module) -> None:
    """Train every parameter."""
    freeze_to(model, 0)


def set_frozen_norm_eval(model: nn.Module) -> None:
    """Put normalisation layers whose parameters are all frozen into eval mode.

    Call after `model.train()` when freezing with train_bn=False, so frozen BatchNorms keep their
    pretrained running statistics.
    """
    for module in model.modules():
        params = list(module.parameters(recurse=False))
        if isinstance(module, NORM_TYPES) and params and not any(p.requires_grad for p in params):
            module.eval()


def count_parameters(module: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters (optionally only those that require grad)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
