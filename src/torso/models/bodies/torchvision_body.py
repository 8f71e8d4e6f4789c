"""Bodies from torchvision backbones: torso's metadata registry, one entry a family.

torchvision models carry no machine-readable "where to cut" or "how to group", so this is the one
table torso keeps. Each entry says which modules, in order, make the body (the cut), where the
early parameter group ends (the splitter; None derives it from the stages) and the stats.
Names take the prefix `tv:`, e.g. `tv:resnet34`.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torchvision
from torch import nn

from torso.errors import UnknownBackboneError
from torso.models.bodies.body import Stats

PREFIX = "tv:"
IMAGENET_STATS: Stats = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _children_before(*dropped: str) -> Callable[[nn.Module], nn.Sequential]:
    def cut(model: nn.Module) -> nn.Sequential:
        return nn.Sequential(
            OrderedDict((n, m) for n, m in model.named_children() if n not in dropped)
        )

    return cut


def _features(model: nn.Module) -> nn.Sequential:
    return model.features


def _regnet(model: nn.Module) -> nn.Sequential:
    return nn.Sequential(OrderedDict([("stem", model.stem), *model.trunk_output.named_children()]))


@dataclass(frozen=True)
class TorchvisionMeta:
    """How to make a body of one torchvision family.

    pattern: regular expression over torchvision model names.
    cut: the backbone → the stage-level modules of the body, in order.
    split: index into those modules where the early parameter group ends; None = by the stages
        (the first half of them).
    stats: normalisation of the family's ImageNet weights.
    """

    pattern: str
    cut: Callable[[nn.Module], nn.Sequential]
    split: int | None = None
    stats: Stats = IMAGENET_STATS


# Splits given as numbers are fastai's `model_meta` splitters, kept for comparable results.
REGISTRY: tuple[TorchvisionMeta, ...] = (
    TorchvisionMeta(r"(resnet|resnext|wide_resnet)\d", _children_before("avgpool", "fc"), split=6),
    TorchvisionMeta(r"densenet\d+$", _features, split=7),
    TorchvisionMeta(r"vgg\d+(_bn)?$", _features, split=22),
    TorchvisionMeta(r"squeezenet1_[01]$", _features, split=5),
    TorchvisionMeta(r"alexnet$", _features, split=6),
    TorchvisionMeta(r"mobilenet_v[23]", _features),
    TorchvisionMeta(r"efficientnet_(b\d|v2_[sml])$", _features),
    TorchvisionMeta(r"convnext_", _features),
    TorchvisionMeta(r"regnet_[xy]_", _regnet),
)


FAMILIES = (
    "resnet, resnext, wide_resnet, densenet, vgg, squeezenet, alexnet, mobilenet_v2/v3, "
    "efficientnet (v1, v2), convnext and regnet"
)


def torchvision_names() -> list[str]:
    """Every torchvision classification model torso can cut, with the `tv:` prefix."""
    names = torchvision.models.list_models(module=torchvision.models)
    return [PREFIX + n for n in names if lookup_meta(n) is not None]


def lookup_meta(name: str) -> TorchvisionMeta | None:
    """The registry entry for a torchvision model name (without prefix), or None."""
    for meta in REGISTRY:
        if re.match(meta.pattern, name):
            return meta
    return None


def create_torchvision_backbone(name: str) -> tuple[nn.Module, TorchvisionMeta]:
    """The full torchvision model (random weights) and its registry entry."""
    known = torchvision.models.list_models(module=torchvision.models)
    meta = lookup_meta(name)
    if name not in known or meta is None:
        raise UnknownBackboneError(
            f"unknown torchvision backbone {PREFIX}{name!r}; torso cuts {FAMILIES} "
            "(torso.models.bodies.torchvision_names() lists them all)"
        )
    return torchvision.models.get_model(name, weights=None), meta
