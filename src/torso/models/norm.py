"""Which modules are normalisation layers: the one definition that freezing (`train_bn`) and the
optimiser (no weight decay on normalisation parameters) both use.

PyTorch's BatchNorm, InstanceNorm, LayerNorm, GroupNorm and LocalResponseNorm, and every layer
whose class name ends in `Norm` or `Norm2d`: timm's `RmsNorm`, `LayerNorm2d`, `BatchNormAct2d`
(a BatchNorm subclass) and the like, which do not all share PyTorch's base classes.
"""

from __future__ import annotations

from torch import nn

NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
)


def is_norm_layer(module: nn.Module) -> bool:
    """Whether `module` is a normalisation layer (see the module docstring)."""
    return isinstance(module, NORM_TYPES) or type(module).__name__.endswith(("Norm", "Norm2d"))
