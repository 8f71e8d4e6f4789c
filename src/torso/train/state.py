"""A Learner's training state, for exact resume: weights, optimiser, gradient scaler, random
generators, freezing, the phases of the training call and the position in them, the epoch, the
history, the callbacks' state and the run config, in one safetensors file written atomically
(`torso.train.checkpoint.save_training_state`). Nothing is pickled."""

from __future__ import annotations

import copy
import os
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from torso.config import RunConfig
from torso.errors import TorsoError
from torso.train import checkpoint
from torso.train.schedules import Phase

if TYPE_CHECKING:
    from torso.train.callbacks.base import Callback
    from torso.train.learner import Learner


def callback_key(index: int, callback: Callback) -> str:
    """The name under which callback number `index` saves its state, e.g. `"2:EarlyStopping"`."""
    return f"{index}:{type(callback).__name__}"


def save_state(learner: Learner, path: str | os.PathLike) -> None:
    """Write everything `load_state` needs to continue `learner`'s training, to `path`."""
    tensors = {f"model.{k}": v for k, v in learner.model.state_dict().items()}
    optimizer_tensors, optimizer_info = checkpoint.optimizer_to_tensors(
        learner.optimizer.state_dict()
    )
    rng_tensors, rng_info = checkpoint.capture_rng()
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
    }
    if learner.precision.scaler is not None:
        info["scaler"] = learner.precision.state_dict()
    checkpoint.save_training_state(path, tensors, info)


def load_state(learner: Learner, path: str | os.PathLike) -> tuple[list[Phase], int, int] | None:
    """Put the state saved in `path` back into `learner` (same model, same `accumulate`).

    Returns `(phases, phase_index, phase_epoch)`, where training continues, or None when the
    saved run had finished or stopped early.
    """
    tensors, info = checkpoint.load_training_state(path)
    model_state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        learner.model.load_state_dict(model_state, strict=True)
    except RuntimeError:
        raise TorsoError(f"the training state in '{path}' belongs to a different model") from None
    if info.get("accumulate", 1) != learner.accumulate:
        raise TorsoError(
            f"'{path}' was trained with accumulate={info.get('accumulate')}; "
            "resume with the same value"
        )
    learner.freeze_to(int(info["frozen_to"]))
    optimizer_state = checkpoint.optimizer_from_tensors(tensors, info["optimizer"])
    learner.optimizer.load_state_dict(optimizer_state)
    learner.precision.load_state_dict(info.get("scaler"))
    learner.history = [dict(row) for row in info["history"]]
    learner.epoch = int(info["epoch"])
    states = info.get("callbacks", {})
    for index, callback in enumerate(learner.callbacks):
        if callback_key(index, callback) in states:
            callback.load_state_dict(states[callback_key(index, callback)])
    checkpoint.restore_rng(tensors, info["rng"])
    phases = [Phase(**phase) for phase in info["phases"]]
    if info.get("stopped") or int(info["phase_index"]) >= len(phases):
        return None
    return phases, int(info["phase_index"]), int(info["phase_epoch"])


def snapshot(learner: Learner) -> dict[str, Any]:
    """Deep copies of `learner`'s weights, optimiser, freezing, gradient scaler and random
    generators' states, in memory; `restore` puts them back."""
    return {
        "model": copy.deepcopy(learner.model.state_dict()),
        "optimizer": copy.deepcopy(learner.optimizer.state_dict()),
        "frozen_to": learner.frozen_to,
        "precision": learner.precision.state_dict(),
        "rng": checkpoint.capture_rng(),
    }


def restore(learner: Learner, saved: dict[str, Any]) -> None:
    """Put back what `snapshot` copied."""
    learner.model.load_state_dict(saved["model"])
    learner.optimizer.load_state_dict(saved["optimizer"])
    learner.freeze_to(saved["frozen_to"])
    learner.precision.load_state_dict(saved["precision"])
    checkpoint.restore_rng(*saved["rng"])
