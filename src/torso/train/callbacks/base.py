"""The events of the Learner's loop, and the base class of the callbacks that hang off them.

One `fit` (or `fit_one_cycle`, `fine_tune`, a resume, an `lr_find`) runs, in this order:

    before_fit
      before_epoch                                  for each epoch
        before_batch                                for each training batch
          after_pred → after_loss → before_backward
          before_step → after_step                  when the batch ends with an optimiser step
        after_batch
        before_validate → after_validate            when there is validation data
      after_epoch
    after_fit                                       always, also after an error or a stop

Every event method takes the Learner and reads what it needs from it: `epoch` (0-based over the
whole run), `total_epochs`, `batch_index`, `num_batches`, `x` and `y` (the batch on the
device), `pred`, `loss` (the batch's loss, detached), `loss_grad` (what goes into backward; a
callback may replace it in `after_loss` or `before_backward`), `stepping` (whether this batch
ends with an optimiser step), `history` (`history[-1]` is the epoch's row in `after_epoch` and
`after_validate`), `task`, `out`. A callback may set `learner.stop_training = True` (the run
ends after the epoch) or raise `CancelFit` (it ends at once; `after_fit` still runs).

Under torchrun only the main process runs callbacks, unless a callback sets `run_everywhere`.
What a callback must remember across a resumed run goes in `state_dict()` (plain JSON values).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torso.train.learner import Learner

EVENTS = (
    "before_fit",
    "before_epoch",
    "before_batch",
    "after_pred",
    "after_loss",
    "before_backward",
    "before_step",
    "after_step",
    "after_batch",
    "before_validate",
    "after_validate",
    "after_epoch",
    "after_fit",
)


class CancelFit(Exception):
    """Raised by a callback to end the current fit at once (after_fit still runs)."""


class Callback:
    """Base class: every event does nothing."""

    #: Under torchrun, run in every process (True) or in the main process only (False): a
    #: callback that writes files or draws progress runs once; one that takes part in the
    #: training (the learning-rate finder) runs in all processes, so that they stay in step.
    run_everywhere = False

    def before_fit(self, learner: Learner) -> None:
        """Training begins."""

    def before_epoch(self, learner: Learner) -> None:
        """An epoch begins."""

    def before_batch(self, learner: Learner) -> None:
        """A training batch (`learner.x`, `learner.y`) is on the device; hyper-parameters set."""

    def after_pred(self, learner: Learner) -> None:
        """The forward pass is done: `learner.pred`."""

    def after_loss(self, learner: Learner) -> None:
        """The loss is computed: `learner.loss` (detached) and `learner.loss_grad`."""

    def before_backward(self, learner: Learner) -> None:
        """`learner.loss_grad` is about to be back-propagated."""

    def before_step(self, learner: Learner) -> None:
        """The optimiser is about to step (gradients complete)."""

    def after_step(self, learner: Learner) -> None:
        """The optimiser stepped and the gradients were zeroed."""

    def after_batch(self, learner: Learner) -> None:
        """A training batch is done. `float(learner.loss)` makes the CPU wait for the GPU: do
        it only when the value is needed."""

    def before_validate(self, learner: Learner) -> None:
        """Validation of the epoch begins."""

    def after_validate(self, learner: Learner) -> None:
        """Validation of the epoch is done."""

    def after_epoch(self, learner: Learner) -> None:
        """An epoch is done: `learner.history[-1]` holds epoch, train_loss, valid_loss, metrics,
        lr and time."""

    def after_fit(self, learner: Learner) -> None:
        """Training is over (finished, stopped early, or failed)."""

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
