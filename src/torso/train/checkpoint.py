"""Saving and loading models and training state without pickle.

A saved model is a folder with two files:

* `model.safetensors`: the weights (`model.state_dict()`), tensors only;
* `torso.json`: everything needed to rebuild the model before loading them (task and its
  options, backbone, number of outputs, head options, classes, image size, channels, stats,
  torso version) and the SHA-256 of the weights file, so an altered file is caught.

Training state (weights, optimiser, schedule position, epoch, RNG states, callbacks, history) is
one safetensors file whose JSON metadata holds everything that is not a tensor. Every file is
written to a temporary name and renamed (`os.replace`), so a killed process leaves either the
old file or the new one, never half of one. Nothing here ever unpickles.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensor_bytes
from safetensors.torch import save as save_tensor_bytes
from torch import nn

from torso.errors import TorsoError

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "torso.json"
STATE_FILE = "state.safetensors"
FORMAT = "torso-model"
STATE_FORMAT = "torso-training-state"
FORMAT_VERSION = 1


# -- files ------------------------------------------------------------------------------------
def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and `os.replace`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as error:
        raise TorsoError(f"cannot write to '{path.parent}': {error.strerror or error}") from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes 0600; saved files are ordinary ones
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


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
def make_config(
    task: Any,
    backbone: str,
    num_outputs: int,
    *,
    classes: list[str] | None = None,
    size: int | tuple[int, int] | None = None,
    in_channels: int = 3,
    head_options: dict[str, Any] | None = None,
    stats: Any = None,
) -> dict[str, Any]:
    """The JSON-able description of a model that `torso.json` stores and `load_model` rebuilds."""
    from torso.version import __version__

    return {
        "task": task.name,
        "task_options": dict(task.options),
        "backbone": backbone,
        "num_outputs": int(num_outputs),
        "head_options": dict(head_options or {}),
        "in_channels": int(in_channels),
        "classes": list(classes) if classes is not None else None,
        "size": list(size) if isinstance(size, tuple | list) else size,
        "stats": _plain(stats),
        "torso_version": __version__,
    }


def _plain(value: Any) -> Any:
    """Tuples → lists, tensors → lists, so a value survives a JSON round trip unchanged."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    return value


def save_model(model: nn.Module, config: dict[str, Any], folder: str | os.PathLike) -> Path:
    """Write `model.safetensors` and `torso.json` into `folder`; returns the folder."""
    folder = Path(folder)
    for key in ("task", "backbone", "num_outputs"):
        if config.get(key) is None:
            raise TorsoError(f"cannot save a model whose config has no {key!r}")
    weights = tensors_to_bytes(dict(model.state_dict()))
    atomic_write(folder / WEIGHTS_FILE, weights)
    description = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **_plain(config),
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
    }
    atomic_write(folder / CONFIG_FILE, (json.dumps(description, indent=2) + "\n").encode())
    return folder


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The config in `torso.json` of a saved model (`path` is the folder or the JSON file)."""
    path = Path(path)
    file = path / CONFIG_FILE if path.is_dir() else path
    if not file.exists():
        if not path.exists():
            raise TorsoError(f"'{path}' does not exist")
        raise TorsoError(f"'{path}' is not a torso model: it has no {CONFIG_FILE}")
    try:
        config = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise TorsoError(f"'{file}' is damaged: not valid JSON ({error})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise TorsoError(f"'{file}' is not a torso model description")
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise TorsoError(f"'{file}' was written by a newer torso; upgrade torso to load it")
    missing = [
        key for key in ("task", "backbone", "num_outputs", "weights_sha256") if key not in config
    ]
    if missing:
        raise TorsoError(f"'{file}' is damaged: it lacks {', '.join(missing)}")
    return config


def load_model(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a saved model from its folder: the task builds the architecture from
    `torso.json`, then the weights are read from `model.safetensors` (no pickle).

    Returns `(model, config)`; the model is in eval mode on the CPU.
    """
    from torso.models.model import upgrade_state_dict
    from torso.tasks import get_task

    folder = Path(path)
    if folder.is_file():
        folder = folder.parent
    config = read_config(folder)
    weights_file = folder / WEIGHTS_FILE
    try:
        data = weights_file.read_bytes()
    except FileNotFoundError:
        raise TorsoError(f"'{folder}' has {CONFIG_FILE} but no {WEIGHTS_FILE}") from None
    if hashlib.sha256(data).hexdigest() != config["weights_sha256"]:
        raise TorsoError(
            f"'{weights_file}' does not match its {CONFIG_FILE} (altered or truncated): "
            "the checksum differs"
        )
    tensors, _ = parse_tensor_bytes(data, str(weights_file))
    task = get_task(config["task"], **(config.get("task_options") or {}))
    model = task.build_model(config, pretrained=False)
    try:
        model.load_state_dict(upgrade_state_dict(tensors), strict=True)
    except RuntimeError as error:
        first_line = str(error).splitlines()[1 if "\n" in str(error) else 0].strip()
        raise TorsoError(
            f"the weights in '{weights_file}' do not fit the model that {CONFIG_FILE} describes "
            f"({config['backbone']}): {first_line}"
        ) from None
    return model.eval(), config


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
