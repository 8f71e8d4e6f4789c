"""Save-best: keep the weights of the best epoch so far as a loadable model folder."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torso.train.callbacks.base import Callback, higher_is_better, monitored_value

if TYPE_CHECKING:
    from torso.train.learner import Learner


class SaveBest(Callback):
    """Saves the model (`model.safetensors` + `torso.json`) whenever the watched metric improves.

    Args:
        folder: where to save (default `<run folder>/best`).
        monitor: a column of the epoch row (default: the task's main metric).
    """

    def __init__(self, folder: str | os.PathLike | None = None, monitor: str | None = None):
        self.folder = Path(folder) if folder is not None else None
        self.monitor = monitor
        self.best: float | None = None
        self.best_epoch: int | None = None

    def after_epoch(self, learner: Learner) -> None:
        row = learner.history[-1]
        name, value = monitored_value(learner, row, self.monitor)
        if math.isnan(value):
            return
        sign = 1 if higher_is_better(learner, name) else -1
        if self.best is None or sign * (value - self.best) > 0:
            self.best, self.best_epoch = value, int(row["epoch"])
            folder = self.folder or (Path(learner.out) / "best" if learner.out else None)
            if folder is not None:
                learner.save_model(folder)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = state.get("best"), state.get("best_epoch")
