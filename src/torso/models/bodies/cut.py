"""Cutting a user's module into a body: by index, by function, or before its pooling layer."""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable

from torch import nn

from torso.errors import TorsoError

Cut = int | Callable[[nn.Module], nn.Module] | None

_POOL = re.compile(r"Pool[123]d$")


def has_pool_type(module: nn.Module) -> bool:
    """True if `module` or a module inside it is a pooling layer (class name ends in PoolNd)."""
    return any(_POOL.search(type(m).__name__) for m in module.modules())


def auto_cut(model: nn.Module) -> int:
    """Index of the last top-level child that contains a pooling layer: the body ends before it.

    Raises TorsoError for a module without one (transformers): the user must say where to cut.
    """
    children = list(model.children())
    for index in reversed(range(len(children))):
        if has_pool_type(children[index]):
            return index
    raise TorsoError(
        f"cannot find where to cut {type(model).__name__}: none of its top-level children "
        "contains a pooling layer (as in a transformer); pass cut= an index into its children "
        "or a function that returns the body"
    )


def cut_model(model: nn.Module, cut: Cut) -> nn.Sequential:
    """The body part of `model` as a Sequential of stage-level modules.

    cut: an int keeps `children[:cut]`; a callable returns the body module; None cuts before the
    last child that contains a pooling layer.
    """
    if cut is None:
        cut = auto_cut(model)
    if isinstance(cut, int):
        named = list(model.named_children())[:cut]
        if not named:
            raise TorsoError(f"cut={cut} leaves no layers of {type(model).__name__}")
        return nn.Sequential(OrderedDict(named))
    if callable(cut):
        body = cut(model)
        if not isinstance(body, nn.Module):
            raise TorsoError(f"cut function returned {type(body).__name__}, not an nn.Module")
        return body if isinstance(body, nn.Sequential) else nn.Sequential(body)
    raise TorsoError(f"cut must be an int, a function or None, not {type(cut).__name__}")
