"""A model is a body and a head: creating one, its parameter groups, freezing.

Every torso model has two attributes, `model.body` (image → feature maps) and `model.head`
(features → answer), and its forward passes the body's output to the head:

| model | `body` | `head` receives |
| --- | --- | --- |
| `BodyHeadModel` (`create_model`) | a Body | the body's final map |
| `SiameseModel` | a Body, shared by both images | both images' final maps, concatenated |
| `DynamicUnet` | a Body | the image and `body.features(image)` (every stage) |
| `UNet2015` | its contracting path | the image and the contracting path's maps |

So `param_groups`, `freeze`, `freeze_to` and `unfreeze` read `model.body` and `model.head` and
need no special case. A model of your own without them needs a splitter (a function
`model -> list of parameter lists`) given to the Learner.

BatchNorm policy when the body is frozen (`train_bn=True`, the default, as in fastai): the body's
normalisation layers (`torso.models.norm.is_norm_layer`: PyTorch's and timm's, e.g. `RmsNorm`)
keep their parameters trainable and their running statistics updating, which lets a pretrained
body adapt to new data's statistics while its weights stay fixed. With `train_bn=False` (smp's
`freeze_encoder` behaviour) they are frozen too; `set_frozen_norm_eval` then keeps them in eval
mode so their running statistics stay those of the pretrained weights.
"""

from __future__ import annotations

import torch
from torch import nn

from torso.errors import TorsoError
from torso.models.bodies import Body, create_body
from torso.models.bodies.weights import Pretrained
from torso.models.heads import create_head
from torso.models.norm import is_norm_layer


class BodyHeadModel(nn.Module):
    """`head(body(images))`: a classifier, multi-label or regression model.

    body: images `(N, C_in, H, W)` in [0, 1] → final feature map `(N, C, h, w)`.
    head: that map → `(N, num_outputs)`, e.g. `create_head(C, num_outputs)`.

    The state dict's keys start with `body.` and `head.` (older checkpoints with fastai's
    `0.`/`1.` keys load through `upgrade_state_dict`).
    """

    def __init__(self, body: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.head = head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images `(N, C_in, H, W)` → outputs `(N, num_outputs)`."""
        return self.head(self.body(images))


def create_model(
    backbone: str | nn.Module | Body,
    num_outputs: int,
    *,
    pretrained: Pretrained = False,
    in_channels: int = 3,
    cut=None,
    **head_options,
) -> BodyHeadModel:
    """`BodyHeadModel(body, head)` for `num_outputs` outputs.

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
    return BodyHeadModel(body, head)


def upgrade_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the keys of a state dict saved when models were `nn.Sequential(body, head)`.

    Those keys start with `0.` (the body) and `1.` (the head), as fastai's models have them;
    today's start with `body.` and `head.`. Other keys are returned unchanged, so a current state
    dict passes through as it is.
    """
    prefixes = {"0.": "body.", "1.": "head."}
    return {prefixes.get(key[:2], key[:2]) + key[2:]: value for key, value in state.items()}


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


def body_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """`(model.body, model.head)`, looking through DDP and `torch.compile` wrappers.

    Raises TorsoError for a model without them: such a model needs a splitter.
    """
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            break
    body = getattr(model, "body", None)
    head = getattr(model, "head", None)
    if not isinstance(body, nn.Module) or not isinstance(head, nn.Module):
        raise TorsoError(
            f"{type(model).__name__} has no .body and .head modules, so torso cannot split its "
            "parameters into groups: build it with torso.create_model (or give it .body and "
            ".head), or pass the Learner a splitter, a function model -> list of parameter lists"
        )
    return body, head


def param_groups(model: nn.Module) -> list[list[nn.Parameter]]:
    """Parameter groups for discriminative learning rates: the body's groups, then the head.

    A Body gives its own groups (early, late); any other body module is one group. Everything
    that is not in the body (the head, and any other parameter of the model) is the last group,
    so every parameter is in exactly one group.
    """
    body, _ = body_and_head(model)
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
        {id(p) for m in model.modules() if is_norm_layer(m) for p in m.parameters()}
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
        if is_norm_layer(module) and params and not any(p.requires_grad for p in params):
            module.eval()


def count_parameters(module: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters (optionally only those that require grad)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
