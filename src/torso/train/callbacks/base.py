"""The hooks a callback may define; the Learner calls them in this order:

`on_train_start` → (`on_epoch_start` → `on_batch_end`… → `on_epoch_end`)… → `on_train_end`.

A callback reads the Learner's public attributes (`epoch`, `total_epochs`, `batch_index`,
`num_batches`, `history`, `task`, `out`) and may set `learner.stop_training = True`.
What it must remember across a resumed run goes in `state_dict()` (plain JSON values).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from torso.train.learner import Learner


class Callback:
    """Base class: every hook does nothing."""

    def on_train_start(self, learner: Learner) -> None:
        """Training (a `fit`, `fit_one_cycle`, `fine_tune` or a resume) begins."""

    def on_epoch_start(self, learner: Learner) -> None:
        """An epoch begins; `learner.epoch` is its 0-based number over the whole run."""

    def on_batch_end(self, learner: Learner, loss: torch.Tensor) -> None:
        """A training batch is done; `loss` is its loss, a 0-d tensor on the training device.

        `float(loss)` makes the CPU wait for the GPU: do it only when the value is needed.
        """

    def on_validation_batch_end(self, learner: Learner) -> None:
        """A validation batch is done."""

    def on_epoch_end(self, learner: Learner, row: dict[str, float]) -> None:
        """An epoch is done; `row` holds epoch, train_loss, valid_loss, metrics, lr, time."""

    def on_train_end(self, learner: Learner) -> None:
        """Training is over (finished, or stopped early)."""

    def state_dict(self) -> dict[str, Any]:
        """What to save with the training state (plain JSON values)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""


def monitored_value(
    learner: Learner, row: dict[str, float], monitor: str | None
) -> tuple[str, float]:
    """The watched metric's name and value in `row` (the task's main metric by default)."""
    name = monitor or learner.task.main_metric
    if name not in row:
        from torso.errors import TorsoError

        raise TorsoError(f"cannot watch {name!r}: the epoch reports {', '.join(row)}")
    return name, float(row[name])


def higher_is_better(learner: Learner, name: str) -> bool:
    """Whether a larger value of metric `name` is an improvement."""
    if name == learner.task.main_metric:
        return learner.task.higher_is_better
    return not name.endswith(("loss", "error", "error_rate", "mae", "rmse"))
