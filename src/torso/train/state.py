"""A Learner's training state, for exact resume: weights, optimiser, gradient scaler, random
generators, freezing, the phases of the training call and the position in them, the epoch, the
history, the callbacks' state and the run config, in one safetensors file written atomically
(`save_training_state`). Nothing is pickled."""

from __future__ import annotations

import copy
import os
import random
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from torso.config import RunConfig
from torso.errors import TorsoError
from torso.files import atomic_write, read_tensor_file, tensors_to_bytes
from torso.train.schedules import Phase

if TYPE_CHECKING:
    from torso.train.callbacks.base import Callback
    from torso.train.learner import Learner


STATE_FILE = "state.safetensors"
STATE_FORMAT = "torso-training-state"


def _plain(value: Any) -> Any:
    """Tuples → lists, tensors → lists, so a value survives a JSON round trip unchanged."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    return value


# -- the state file ---------------------------------------------------------------------------
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


def callback_key(index: int, callback: Callback) -> str:
    """The name under which callback number `index` saves its state, e.g. `"2:EarlyStopping"`."""
    return f"{index}:{type(callback).__name__}"


def save_state(learner: Learner, path: str | os.PathLike) -> None:
    """Write everything `load_state` needs to continue `learner`'s training, to `path`."""
    tensors = {f"model.{k}": v for k, v in learner.model.state_dict().items()}
    optimizer_tensors, optimizer_info = optimizer_to_tensors(learner.optimizer.state_dict())
    rng_tensors, rng_info = capture_rng()
    tensors.update(optimizer_tensors)
    tensors.update(rng_tensors)
    config = learner.config
    info: dict[str, Any] = {
        "phases": [asdict(phase) for phase in learner.phases],
        "phase_index": learner.phase_index,
        "phase_epoch": learner.phase_epoch,
        "epoch": learner.epoch,
        "stopped": learner.stop_training,
        "frozen_to": learner.frozen_to,
        "history": learner.history,
        "optimizer": optimizer_info,
        "rng": rng_info,
        "callbacks": {
            callback_key(index, cb): cb.state_dict() for index, cb in enumerate(learner.callbacks)
        },
        "config": config.to_dict() if isinstance(config, RunConfig) else config,
        "accumulate": learner.accumulate,
        "channels_last": learner.channels_last,
    }
    if learner.precision.scaler is not None:
        info["scaler"] = learner.precision.state_dict()
    save_training_state(path, tensors, info)


def load_state(learner: Learner, path: str | os.PathLike) -> tuple[list[Phase], int, int] | None:
    """Put the state saved in `path` back into `learner` (same model, same `accumulate`).

    Returns `(phases, phase_index, phase_epoch)`, where training continues, or None when the
    saved run had finished or stopped early.
    """
    tensors, info = load_training_state(path)
    model_state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        learner.model.load_state_dict(model_state, strict=True)
    except RuntimeError:
        raise TorsoError(f"the training state in '{path}' belongs to a different model") from None
    _keep_layout(learner, info.get("channels_last"))
    if info.get("accumulate", 1) != learner.accumulate:
        raise TorsoError(
            f"'{path}' was trained with accumulate={info.get('accumulate')}; "
            "resume with the same value"
        )
    learner.freeze_to(int(info["frozen_to"]))
    optimizer_state = optimizer_from_tensors(tensors, info["optimizer"])
    learner.optimizer.load_state_dict(optimizer_state)
    learner.precision.load_state_dict(info.get("scaler"))
    learner.history = [dict(row) for row in info["history"]]
    learner.epoch = int(info["epoch"])
    states = info.get("callbacks", {})
    for index, callback in enumerate(learner.callbacks):
        if callback_key(index, callback) in states:
            callback.load_state_dict(states[callback_key(index, callback)])
    restore_rng(tensors, info["rng"])
    phases = [Phase(**phase) for phase in info["phases"]]
    if info.get("stopped") or int(info["phase_index"]) >= len(phases):
        return None
    return phases, int(info["phase_index"]), int(info["phase_epoch"])


def _keep_layout(learner: Learner, saved: Any) -> None:
    """Train on in the memory layout the saved run trained in, when the learner would otherwise
    measure which is faster (a CPU Learner's probe, `torso.train.placement`): a layout chosen by
    timing can differ from one process to the next, and the sums in another layout differ in
    the last bits, so a resumed run would not give the weights of an uninterrupted one."""
    if learner.channels_last is None and isinstance(saved, bool):
        learner.channels_last = saved
        layout = torch.channels_last if saved else torch.contiguous_format
        learner.model.to(memory_format=layout)


def snapshot(learner: Learner) -> dict[str, Any]:
    """Deep copies of `learner`'s weights, optimiser, freezing, gradient scaler and random
    generators' states, in memory; `restore` puts them back."""
    return {
        "model": copy.deepcopy(learner.model.state_dict()),
        "optimizer": copy.deepcopy(learner.optimizer.state_dict()),
        "frozen_to": learner.frozen_to,
        "precision": learner.precision.state_dict(),
        "rng": capture_rng(),
    }


def restore(learner: Learner, saved: dict[str, Any]) -> None:
    """Put back what `snapshot` copied."""
    learner.model.load_state_dict(saved["model"])
    learner.optimizer.load_state_dict(saved["optimizer"])
    learner.freeze_to(saved["frozen_to"])
    learner.precision.load_state_dict(saved["precision"])
    restore_rng(*saved["rng"])
