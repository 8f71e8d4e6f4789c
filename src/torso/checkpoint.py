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
