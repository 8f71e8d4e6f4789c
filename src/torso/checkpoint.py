"""A saved model: a folder with `model.safetensors` and `torso.json`, written and read back
without pickle.

* `model.safetensors`: the weights (`model.state_dict()`), tensors only;
* `torso.json`: the run's `RunConfig` (everything needed to rebuild the model before loading the
  weights: task and options, backbone, head options, classes, size, channels, stats, version),
  the file format, and the SHA-256 of the weights file, so an altered file is caught.

Both files are written by `torso.files.atomic_write`, so a killed process leaves the old file
or the new one, never half of one. The training state for `--resume` is `torso.train.state`'s.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from torso.config import CONFIG_FILE, RunConfig, as_run_config, config_file, read_file
from torso.config import FILE_FORMAT as FORMAT
from torso.errors import TorsoError
from torso.files import atomic_write, parse_tensor_bytes, tensors_to_bytes

__all__ = ["CONFIG_FILE", "FORMAT", "WEIGHTS_FILE", "load_model", "read_config", "save_model"]

WEIGHTS_FILE = "model.safetensors"


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
    where = str(config_file(folder))
    model = _build_model(config, where)
    state = upgrade_state_dict(tensors)
    misfit = _misfit(model, state, config)
    if misfit is not None:
        raise TorsoError(f"'{where}': {misfit} ('{weights_file}')")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first_line = str(error).splitlines()[1 if "\n" in str(error) else 0].strip()
        raise TorsoError(
            f"the weights in '{weights_file}' do not fit the model that {CONFIG_FILE} describes "
            f"({config.backbone}): {first_line}"
        ) from None
    return model.eval(), config


def _build_model(config: RunConfig, where: str) -> nn.Module:
    """The task's model for `config` (read from the file `where`), fresh weights. A field the
    task, the body or the head refuses is a `TorsoError` naming `where` and the field."""
    from torso.registry import get_task, task_class

    try:
        task_class(config.task)
    except TorsoError as error:
        raise TorsoError(f"'{where}': task: {error}") from None
    try:
        task = get_task(config.task, **config.task_options)
    except TorsoError as error:
        raise TorsoError(f"'{where}': task_options: {error}") from None
    try:
        return task.build_model(config, pretrained=False)
    except TorsoError as error:  # an unknown backbone, a decoder that does not fit the body
        raise TorsoError(f"'{where}': {error}") from None
    except (TypeError, ValueError, RuntimeError) as error:
        # The head's keyword arguments come straight from the file: a name the head does not
        # take, or a value of the wrong kind, fails inside its constructor.
        if not config.head_options:
            raise
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise TorsoError(
            f"'{where}': head_options {dict(config.head_options)} do not fit the "
            f"{config.task} head ({first_line})"
        ) from None


def _misfit(model: nn.Module, state: Mapping[str, Any], config: RunConfig) -> str | None:
    """The field of `config` that the saved weights `state` contradict, when it is one of the
    two a person may edit by hand without changing the architecture: `in_channels` (the first
    convolution's input channels) or `num_outputs` (the last layer's outputs)."""
    built = model.state_dict()
    wrong = [
        (key, tuple(state[key].shape), tuple(value.shape))
        for key, value in built.items()
        if key in state and tuple(state[key].shape) != tuple(value.shape)
    ]
    if not wrong:
        return None
    first_convolution = next((key for key, value in built.items() if value.ndim == 4), None)
    key, saved, expected = wrong[0]
    if key == first_convolution and saved[1:2] != expected[1:2]:
        return (
            f"in_channels is {config.in_channels}, but the weights take {saved[1]}-channel images"
        )
    if all(
        ours[:1] == (config.num_outputs,) and theirs[:1] != ours[:1] for _, theirs, ours in wrong
    ):
        return f"num_outputs is {config.num_outputs}, but the weights give {saved[0]} outputs"
    return None
