"""Pretrained weights, resolved in one place.

`pretrained` is either True (find the weights the backbone was published with) or a path to a
local file (safetensors, or a torch file that loads with `weights_only=True`). True looks, in
order, at the local caches of the timm / torchvision hubs, then at the hub itself. Offline, the hub
fails within seconds with a message that says how to pass a local file, instead of retrying for a
minute as the hub clients do.
"""

from __future__ import annotations

import os
import pickle
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from torso.errors import TorsoError, WeightsUnavailableError

Pretrained = bool | str | os.PathLike

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a weights file, by name. Never unpickles arbitrary objects.

    Accepts `.safetensors` files and torch files saved from a state dict (possibly wrapped in
    {"state_dict": ...} or {"model": ...}, possibly with DDP's "module." prefixes).
    """
    path = Path(path)
    if not path.is_file():
        raise TorsoError(f"weights file '{path}' does not exist")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (
        pickle.UnpicklingError,
        SafetensorError,
        RuntimeError,
        OSError,
        EOFError,
        ValueError,
    ) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error)
        raise TorsoError(
            f"weights file '{path}' cannot be read as safetensors or a weights-only torch file: "
            f"{first_line}"
        ) from None
    while isinstance(state, dict) and len(state) == 1 and next(iter(state)) in _WRAPPER_KEYS:
        state = next(iter(state.values()))
    for key in _WRAPPER_KEYS[:3]:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TorsoError(f"weights file '{path}' does not hold a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def load_into(
    backbone: nn.Module, body: nn.Module, state: dict[str, torch.Tensor], source: str
) -> None:
    """Load `state` into `backbone`, requiring every tensor of `body` (a part of it) to be there.

    Keys the body does not use (a classifier, say) are ignored; a missing body tensor or a
    shape mismatch is an error naming the source.
    """
    own = backbone.state_dict()
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if mismatched:
        raise TorsoError(
            f"weights from {source} do not fit this backbone: {len(mismatched)} tensors differ "
            f"in shape, e.g. {'; '.join(mismatched[:3])}"
        )
    body_tensors = {id(t) for t in body.state_dict(keep_vars=True).values()}
    needed = [k for k, v in backbone.state_dict(keep_vars=True).items() if id(v) in body_tensors]
    missing = [k for k in needed if k not in state]
    if missing:
        raise TorsoError(
            f"weights from {source} lack {len(missing)} of the body's {len(needed)} tensors, "
            f"e.g. {', '.join(missing[:3])}: are they for another backbone?"
        )
    backbone.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def hub_reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether the hub's host name resolves (a DNS look-up only; no connection is made)."""
    host = urlparse(url).hostname or url
    previous = socket.getdefaulttimeout()
    try:
        socket.setdefaulttimeout(timeout)
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False
    finally:
        socket.setdefaulttimeout(previous)


def _unavailable(name: str, where: str) -> WeightsUnavailableError:
    return WeightsUnavailableError(
        f"no pretrained weights for {name!r} on this machine and {where} cannot be reached; "
        f"download them elsewhere and pass the file: create_body({name!r}, "
        "pretrained='weights.safetensors') or `torso train --weights FILE`"
    )


def timm_hub_state(model: nn.Module, name: str) -> dict[str, torch.Tensor] | None:
    """The timm weights from the local Hugging Face cache, or None when not cached."""
    from huggingface_hub import try_to_load_from_cache

    cfg = getattr(model, "pretrained_cfg", None) or {}
    repo = cfg.get("hf_hub_id")
    if not repo:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        cached = try_to_load_from_cache(repo, filename)
        if isinstance(cached, str):
            return read_state_dict(cached)
    return None


def load_timm_from_hub(model: nn.Module, name: str) -> None:
    """Fetch and load timm's published weights (classifier dropped), failing fast offline."""
    import timm.models

    cfg = getattr(model, "pretrained_cfg", None) or {}
    url = "https://huggingface.co" if cfg.get("hf_hub_id") else cfg.get("url", "")
    if not url:
        raise WeightsUnavailableError(f"timm publishes no pretrained weights for {name!r}")
    if not hub_reachable(url):
        raise _unavailable(name, urlparse(url).hostname or url)
    timm.models.load_pretrained(model, pretrained_cfg=cfg, num_classes=0, strict=False)


def torchvision_hub_state(name: str) -> dict[str, torch.Tensor]:
    """torchvision's DEFAULT weights for `name`, from the torch hub cache or downloaded."""
    import torchvision

    weights = torchvision.models.get_model_weights(name).DEFAULT
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name
    if cached.is_file():
        return read_state_dict(cached)
    if not hub_reachable(weights.url):
        raise _unavailable(f"tv:{name}", urlparse(weights.url).hostname or weights.url)
    return weights.get_state_dict(progress=True)
