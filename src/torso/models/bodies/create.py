"""`create_body`: any backbone → a Body."""

from __future__ import annotations

import copy
import difflib
import os
from pathlib import Path

import timm
from torch import nn

from torso.errors import TorsoError, UnknownBackboneError
from torso.models.bodies.body import Body, SequentialBody, Stats, adapt_stats
from torso.models.bodies.cut import Cut, cut_model
from torso.models.bodies.first_conv import adapt_first_conv
from torso.models.bodies.timm_body import TimmBody, create_timm_backbone, timm_stats
from torso.models.bodies.torchvision_body import (
    FAMILIES,
    PREFIX,
    create_torchvision_backbone,
    torchvision_names,
)
from torso.models.bodies.weights import (
    Pretrained,
    load_into,
    load_timm_from_hub,
    read_state_dict,
    timm_hub_state,
    torchvision_hub_state,
)


def create_body(
    backbone: str | nn.Module,
    *,
    pretrained: Pretrained = False,
    in_channels: int = 3,
    cut: Cut = None,
    stats: Stats | None = None,
) -> Body:
    """Cut a backbone into a body: image `(N, in_channels, H, W)` in [0, 1] → feature maps.

    backbone: a timm model name (`"resnet34"`, `"convnext_tiny"`, `"vit_small_patch16_224"`), a
        torchvision name with the `tv:` prefix (`"tv:resnet34"`), or an `nn.Module` (copied,
        never changed; its weights count as pretrained).
    pretrained: False for random weights, True for the published weights (local cache, then the
        hub), or the path of a local weights file (safetensors or a weights-only torch file).
    in_channels: input channels; the first convolution's pretrained kernel is adapted (summed
        for 1, repeated and scaled by 3/n for n), never dropped.
    cut: where to cut: an index into the backbone's children or a function returning the body.
        Default: torso's registry for torchvision, timm's metadata for timm, and for a module the
        last top-level child containing a pooling layer (fastai's rule).
    stats: `(mean, std)` to normalise with, overriding the weights' own.
    """
    if in_channels < 1:
        raise TorsoError(f"in_channels must be at least 1, not {in_channels}")
    if isinstance(backbone, nn.Module):
        return _module_body(copy.deepcopy(backbone), pretrained, in_channels, cut, stats)
    if not isinstance(backbone, str):
        raise TorsoError(f"backbone must be a name or an nn.Module, not {type(backbone).__name__}")
    check_backbone_name(backbone)
    if backbone.startswith(PREFIX):
        return _torchvision_body(backbone[len(PREFIX) :], pretrained, in_channels, cut, stats)
    return _timm_body(backbone, pretrained, in_channels, cut, stats)


def check_backbone_name(name: str) -> None:
    """Raise UnknownBackboneError, naming the closest known names, unless `name` is a timm
    model name or a torchvision name with the `tv:` prefix. Creates nothing."""
    known = name in torchvision_names() if name.startswith(PREFIX) else timm.is_model(name)
    if not known:
        raise UnknownBackboneError(unknown_backbone_message(name))


def unknown_backbone_message(name: str) -> str:
    """'unknown backbone ...' with the closest timm and torchvision names."""
    candidates = timm.list_models() + torchvision_names()
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    families = f"; torso cuts torchvision's {FAMILIES}" if name.startswith(PREFIX) else ""
    return (
        f"unknown backbone {name!r}{hint} (timm names as in timm.list_models(), "
        f"torchvision names with the '{PREFIX}' prefix{families})"
    )


def _is_file(pretrained: Pretrained) -> bool:
    return isinstance(pretrained, (str, os.PathLike)) and not isinstance(pretrained, bool)


def _module_body(
    model: nn.Module, pretrained: Pretrained, in_channels: int, cut: Cut, stats: Stats | None
) -> Body:
    if pretrained is True:
        raise TorsoError(
            "a module's weights are its own: load them into it first, or pass pretrained= a file"
        )
    layers = cut_model(model, cut)
    if _is_file(pretrained):
        load_into(model, layers, read_state_dict(pretrained), f"'{pretrained}'")
    adapt_first_conv(layers, in_channels, pretrained=True)
    return SequentialBody(
        layers,
        name=type(model).__name__,
        in_channels=in_channels,
        stats=adapt_stats(stats, in_channels),
    )


def _torchvision_body(
    name: str, pretrained: Pretrained, in_channels: int, cut: Cut, stats: Stats | None
) -> Body:
    model, meta = create_torchvision_backbone(name)
    layers = meta.cut(model) if cut is None else cut_model(model, cut)
    if pretrained is not False:
        if _is_file(pretrained):
            state, source = read_state_dict(pretrained), f"'{pretrained}'"
        else:
            state, source = torchvision_hub_state(name), f"torchvision's {name} weights"
        load_into(model, layers, state, source)
    adapt_first_conv(layers, in_channels, pretrained=pretrained is not False)
    return SequentialBody(
        layers,
        name=PREFIX + name,
        in_channels=in_channels,
        stats=adapt_stats(stats or meta.stats, in_channels),
        split=meta.split if cut is None else None,
    )


def _timm_body(
    name: str, pretrained: Pretrained, in_channels: int, cut: Cut, stats: Stats | None
) -> Body:
    if cut is not None:
        # The weights go into the whole backbone before it is cut (and its first convolution
        # adapted), as for a module of the user's.
        model = create_timm_backbone(name, 3)
        if pretrained is not False:
            _load_timm_weights(model, name, pretrained)
        stats = stats or timm_stats(model)
        body = _module_body(model, False, in_channels, cut, stats)
        body.name = name
        return body
    if pretrained is False:
        model = create_timm_backbone(name, in_channels)
    else:
        model = create_timm_backbone(name, 3)
        _load_timm_weights(model, name, pretrained)
        adapt_first_conv(model, in_channels, pretrained=True)
    return TimmBody(
        model,
        name=name,
        in_channels=in_channels,
        stats=adapt_stats(stats or timm_stats(model), in_channels),
    )


def _load_timm_weights(model: nn.Module, name: str, pretrained: Pretrained) -> None:
    """Load a local file's weights (`pretrained` a path) or the published ones (True)."""
    if _is_file(pretrained):
        load_into(model, model, read_state_dict(pretrained), f"'{Path(pretrained)}'")
    else:
        _load_timm_pretrained(model, name)


def _load_timm_pretrained(model: nn.Module, name: str) -> None:
    from torso.models.bodies.packaged import packaged_state

    packaged = packaged_state(name, model)
    if packaged is not None:
        state, source = packaged
        load_into(model, model, state, source)
        return
    cached = timm_hub_state(model, name)
    if cached is not None:
        load_into(model, model, cached, f"the cached timm weights of {name}")
        return
    load_timm_from_hub(model, name)
