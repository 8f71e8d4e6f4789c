"""Saving and loading models and training state without pickle.

A saved model is a folder with two files:

* `model.safetensors`: the weights (`model.state_dict()`), tensors only;
* `torso.json`: everything needed to rebuild the model before loading them (task and its
  options, backbone, number of outputs, head options, classes, image size, channels, stats,
  torso version) and the SHA-256 of the weights file, so an altered file is caught.

Training state (weights, optimiser, schedule position, epoch, RNG states, callbacks, history) is
one safetensors file whose JSON metadata holds everything that is not a tensor. Every file is
written by `torso.files.atomic_write` (a temporary name, then `os.replace`), so a killed process
leaves either the old file or the new one, never half of one. Nothing here ever unpickles.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensor_bytes
from safetensors.torch import save as save_tensor_bytes
from torch import nn

from torso.config import CONFIG_FILE, RunConfig, as_run_config, config_file, read_file
from torso.config import FILE_FORMAT as FORMAT
from torso.errors import TorsoError
from torso.files import atomic_write

__all__ = ["CONFIG_FILE", "FORMAT", "atomic_write"]

WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "state.safetensors"
STATE_FORMAT = "torso-training-state"


# -- files ------------------------------------------------------------------------------------
def tensors_to_bytes(tensors: dict[str, torch.Tensor], info: dict[str, Any] | None = None) -> bytes:
    """Tensors (copied to CPU, contiguous, unshared) plus optional JSON `info`, as safetensors."""
    plain = {name: value.detach().to("cpu").contiguous().clone() for name, value in tensors.items()}
    metadata = {"torso": json.dumps(info)} if info is not None else None
    return save_tensor_bytes(plain, metadata=metadata)


def read_tensor_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and JSON info from a safetensors file; a clear TorsoError if it is damaged."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TorsoError(f"'{path}' does not exist") from None
    except OSError as error:
        raise TorsoError(f"cannot read '{path}': {error.strerror or error}") from None
    return parse_tensor_bytes(data, str(path))


def parse_tensor_bytes(data: bytes, name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and JSON info from safetensors bytes; `name` is used in error messages."""
    damaged = f"'{name}' is damaged or truncated (not a complete safetensors file)"
    if len(data) < 8:
        raise TorsoError(damaged)
    header_length = int.from_bytes(data[:8], "little")
    if header_length > len(data) - 8:
        raise TorsoError(damaged)
    try:
        header = json.loads(data[8 : 8 + header_length])
        tensors = load_tensor_bytes(data)
    except (SafetensorError, ValueError, UnicodeDecodeError):
        raise TorsoError(damaged) from None
    metadata = header.get("__metadata__") or {}
    try:
        info = json.loads(metadata["torso"]) if "torso" in metadata else {}
    except json.JSONDecodeError:
        raise TorsoError(damaged) from None
    return tensors, info


# -- models -----------------------------------------------------------------------------------
def save_model(
    model: nn.Module, config: RunConfig | Mapping[str, Any], folder: str | os.PathLike
) -> Path:
    """Write `model.safetensors` and `torso.json` (the run config, the file format and the
    weights' SHA-256) into `folder`, each atomically; returns the folder.

    config: the run's `RunConfig` (a `torso.json`-style dict is checked and accepted too).
    """
    folder = Path(folder)
    config = as_run_config(config, where=f"the config of the model saved to '{folder}'")
    weights = tensors_to_bytes(dict(model.state_dict()))
    atomic_write(folder / WEIGHTS_FILE, weights)
    description = {
        "format": FORMAT,
        **config.to_dict(),
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
    }
    atomic_write(folder / CONFIG_FILE, json.dumps(description, indent=2) + "\n")
    return folder


def read_config(path: str | os.PathLike) -> RunConfig:
    """The `RunConfig` in `torso.json` of a saved model (`path`: the folder or the JSON file).

    A missing or mistyped field, an unknown format version or a file without the weights'
    checksum is a `TorsoError` naming the file and the field.
    """
    return _read_description(Path(path))[0]


def _read_description(path: Path) -> tuple[RunConfig, str]:
    """The config and the weights' SHA-256 recorded in a saved model's `torso.json`."""
    data = read_file(path)
    where = str(config_file(path))
    config = RunConfig.from_dict(data, where=where)
    checksum = data.get("weights_sha256")
    if not isinstance(checksum, str):
        raise TorsoError(f"'{where}' is damaged: it lacks 'weights_sha256'")
    return config, checksum


def load_model(path: str | os.PathLike) -> tuple[nn.Module, RunConfig]:
    """Rebuild a saved model from its folder: the task builds the architecture from
    `torso.json`, then the weights are read from `model.safetensors` (no pickle).

    Returns `(model, config)`; the model is in eval mode on the CPU. Weights saved with the
    keys of torso 0.1's `nn.Sequential` models (`0.*`, `1.*`) load too.
    """
    from torso.models.model import upgrade_state_dict
    from torso.tasks import get_task

    folder = Path(path)
    if folder.is_file():
        folder = folder.parent
    config, checksum = _read_description(folder)
    weights_file = folder / WEIGHTS_FILE
    try:
        data = weights_file.read_bytes()
    except FileNotFoundError:
        raise TorsoError(f"'{folder}' has {CONFIG_FILE} but no {WEIGHTS_FILE}") from None
    if hashlib.sha256(data).hexdigest() != checksum:
        raise TorsoError(
            f"'{weights_file}' does not match its {CONFIG_FILE} (altered or truncated): "
            "the checksum differs"
        )
    tensors, _ = parse_tensor_bytes(data, str(weights_file))
    task = get_task(config.task, **config.task_options)
    model = task.build_model(config, pretrained=False)
    try:
        model.load_state_dict(upgrade_state_dict(tensors), strict=True)
    except RuntimeError as error:
        first_line = str(error).splitlines()[1 if "\n" in str(error) else 0].strip()
        raise TorsoError(
            f"the weights in '{weights_file}' do not fit the model that {CONFIG_FILE} describes "
            f"({config.backbone}): {first_line}"
        ) from None
    return model.eval(), config


def _plain(value: Any) -> Any:
    """Tuples → lists, tensors → lists, so a value survives a JSON round trip unchanged."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    return value


# -- training state ---------------------------------------------------------------------------
def optimizer_to_tensors(
    state: dict[str, Any], prefix: str = "optimizer."
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split `optimizer.state_dict()` into tensors and a JSON-able structure."""
    tensors: dict[str, torch.Tensor] = {}
    values: dict[str, dict[str, Any]] = {}
    for index, slots in state["state"].items():
        values[str(index)] = {}
        for name, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}{index}.{name}"] = value
            else:
                values[str(index)][name] = value
    return tensors, {"values": values, "param_groups": _plain(state["param_groups"])}


def optimizer_from_tensors(
    tensors: dict[str, torch.Tensor], info: dict[str, Any], prefix: str = "optimizer."
) -> dict[str, Any]:
    """Inverse of `optimizer_to_tensors`: a dict for `optimizer.load_state_dict`."""
    state: dict[int, dict[str, Any]] = {int(index): dict(v) for index, v in info["values"].items()}
    for key, value in tensors.items():
        if key.startswith(prefix):
            index, name = key[len(prefix) :].split(".", 1)
            state.setdefault(int(index), {})[name] = value
    groups = []
    for group in info["param_groups"]:
        group = dict(group)
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": state, "param_groups": groups}


def set_seed(seed: int) -> None:
    """Seed Python's, NumPy's and torch's random generators (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The states of Python's, NumPy's and torch's random generators (tensors + JSON)."""
    version, internal, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    tensors = {
        "rng.torch": torch.get_rng_state(),
        "rng.numpy": torch.from_numpy(keys.astype(np.int64)),
    }
    if torch.cuda.is_available():
        for index, value in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{index}"] = value
    info = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, int(position), int(has_gauss), float(cached)],
    }
    return tensors, info


def restore_rng(tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
    """Put back the random generators saved by `capture_rng`."""
    version, internal, gauss = info["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, position, has_gauss, cached = info["numpy"]
    keys = tensors["rng.numpy"].numpy().astype(np.uint32)
    np.random.set_state((kind, keys, position, has_gauss, cached))
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[key] for key in cuda_rng_keys(tensors)]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def cuda_rng_keys(names: Iterable[str]) -> list[str]:
    """The `rng.cuda.<index>` names among `names`, in GPU order: `rng.cuda.2` before
    `rng.cuda.10` (sorted by number, not as strings)."""
    prefix = "rng.cuda."
    chosen = [name for name in names if name.startswith(prefix) and name[len(prefix) :].isdigit()]
    return sorted(chosen, key=lambda name: int(name[len(prefix) :]))


def save_training_state(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], info: dict[str, Any]
) -> None:
    """Write training state atomically: `tensors` as safetensors, `info` as its JSON metadata."""
    atomic_write(path, tensors_to_bytes(tensors, {"format": STATE_FORMAT, **info}))


def load_training_state(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read what `save_training_state` wrote; a TorsoError if it is missing or damaged."""
    path = Path(path)
    if path.is_dir():
        path = path / STATE_FILE
    if not path.exists():
        raise TorsoError(f"no training state to resume from: '{path}' does not exist")
    tensors, info = read_tensor_file(path)
    if info.get("format") != STATE_FORMAT:
        raise TorsoError(f"'{path}' is not a torso training state")
    return tensors, info
