"""Early stopping: end training when the watched metric stops improving."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from torso.errors import TorsoError
from torso.train.callbacks.base import Callback, higher_is_better, monitored_value

if TYPE_CHECKING:
    from torso.train.learner import Learner


class EarlyStopping(Callback):
    """Stop after `patience` epochs without an improvement larger than `min_delta`.

    Args:
        monitor: a column of the epoch row (default: the task's main metric).
        patience: epochs to wait after the last improvement.
        min_delta: the smallest change that counts as an improvement.
    """

    def __init__(self, monitor: str | None = None, patience: int = 3, min_delta: float = 0.0):
        if patience < 1:
            raise TorsoError(f"patience must be at least 1, got {patience}")
        self.monitor = monitor
        self.patience = patience
        self.min_delta = abs(min_delta)
        self.best: float | None = None
        self.wait = 0

    def after_epoch(self, learner: Learner) -> None:
        row = learner.history[-1]
        name, value = monitored_value(learner, row, self.monitor)
        sign = 1 if higher_is_better(learner, name) else -1
        if math.isnan(value):
            improved = False
        elif self.best is None:
            improved = True
        else:
            improved = sign * (value - self.best) > self.min_delta
        if improved:
            self.best, self.wait = value, 0
        else:
            self.wait += 1
            if self.wait >= self.patience:
                learner.stop_training = True

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.wait = state.get("best"), int(state.get("wait", 0))
