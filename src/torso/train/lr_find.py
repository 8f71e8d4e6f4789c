"""The learning-rate finder (Smith 2015, as in fastai), a callback on the Learner's own loop:
train a few batches while the rate grows exponentially, record the smoothed loss, and suggest a
rate by the "valley" rule.

Because the finder is a callback, it trains exactly as training does: the same precision,
gradient accumulation and, under torchrun, DistributedDataParallel. The loss that decides
divergence is averaged over the processes, so all of them record the same curve and stop at the
same batch. The model, optimiser, random generators and the Learner's history are put back
afterwards, so finding a rate does not change the training that follows.

The valley rule: in the trimmed loss curve find the longest run of points in which every later
point has a lower loss than an earlier one (a longest decreasing subsequence, by dynamic
programming); the suggestion lies in the middle of its steepest part, at a third and a half of a
third of the way from its start to its end.

One rule decides what the finder trains, fastai's: the learner as it stands. To find a rate for
fine-tuning a pretrained body, freeze it first (`learner.freeze()`), as the first phase of
`fine_tune` does; `find_learning_rate(learner, fine_tune=True)` does exactly that.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from torso import distributed
from torso.errors import TorsoError
from torso.train import state
from torso.train.callbacks.base import Callback, CancelFit

if TYPE_CHECKING:
    from torso.train.learner import Learner


@dataclass
class LRFindResult:
    """The curve (`lrs`, smoothed `losses`), the suggested rate, and the plot's path if saved."""

    lrs: list[float]
    losses: list[float]
    suggestion: float
    plot: Path | None = None


def valley(lrs: list[float], losses: list[float]) -> float:
    """fastai's "valley" suggestion from a (trimmed) loss curve; see the module docstring."""
    count = len(losses)
    if count < 2:
        raise TorsoError("the learning-rate finder needs more batches to suggest a rate")
    run_length = [1] * count  # length of the longest decreasing run ending at each point
    best_end = 0
    for end in range(1, count):
        for earlier in range(end):
            if losses[end] < losses[earlier] and run_length[end] < run_length[earlier] + 1:
                run_length[end] = run_length[earlier] + 1
        if run_length[end] > run_length[best_end]:
            best_end = end
    best_start = best_end - run_length[best_end]
    third = (best_end - best_start) / 3
    index = best_start + int(third) + int(third / 2)
    return lrs[max(0, min(index, count - 1))]


class LRFinder(Callback):
    """Sets an exponentially growing rate before each batch, records the smoothed loss after
    it, and ends the fit after `num_it` batches or once the loss diverges (see `lr_find`).

    `show`: draw progress (the batch count, rate and loss) on `stream`; a rich bar on a
    terminal, a plain line every tenth of the way otherwise. Only the main process draws.
    """

    run_everywhere = True  # every process must set the same rates and stop at the same batch

    def __init__(
        self,
        start_lr: float,
        end_lr: float,
        num_it: int,
        *,
        stop_div: bool = True,
        beta: float = 0.98,
        show: bool = True,
        stream: IO[str] | None = None,
    ) -> None:
        self.start_lr, self.end_lr, self.num_it = start_lr, end_lr, num_it
        self.stop_div, self.beta = stop_div, beta
        self.show, self.stream = show and distributed.is_main_process(), stream
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self._average, self._best = 0.0, math.inf
        self._bar: Any = None

    def _rate(self) -> float:
        position = len(self.lrs) / (self.num_it - 1)
        return self.start_lr * (self.end_lr / self.start_lr) ** position

    def before_fit(self, learner: Learner) -> None:
        output = self.stream or sys.stdout
        if self.show and getattr(output, "isatty", lambda: False)():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("[bold]lr_find"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                console=Console(file=output),
                transient=True,
            )
            self._bar.start()
            self._bar.add_task("lr_find", total=self.num_it, status="")

    def before_batch(self, learner: Learner) -> None:
        learner.set_learning_rates([self._rate()] * len(learner.groups))

    def after_loss(self, learner: Learner) -> None:
        value = float(learner.loss)
        if distributed.is_distributed():  # the same number in every process
            value = distributed.sum_across([value])[0] / distributed.world_size()
        iteration = len(self.losses)
        self._average = self.beta * self._average + (1 - self.beta) * value
        smoothed = self._average / (1 - self.beta ** (iteration + 1))
        self.lrs.append(self._rate())
        self.losses.append(smoothed)
        self._best = min(self._best, smoothed)
        self._report(smoothed)
        diverged = not math.isfinite(smoothed) or (self.stop_div and smoothed > 4 * self._best)
        if diverged or len(self.losses) >= self.num_it:
            raise CancelFit  # before backward: a diverged or final batch needs no step

    def _report(self, loss: float) -> None:
        done = len(self.losses)
        status = f"lr {self.lrs[-1]:.2e}  loss {loss:.4f}"
        if self._bar is not None:
            self._bar.update(self._bar.task_ids[0], completed=done, status=status)
        elif self.show and (done % max(1, self.num_it // 10) == 0 or done == self.num_it):
            print(f"lr_find {done}/{self.num_it}  {status}", file=self.stream or sys.stdout)

    def after_fit(self, learner: Learner) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def suggestion(self) -> float:
        """The valley rule on the curve, without its first tenth and its last five points, and
        cut at the first non-finite loss."""
        skip = self.num_it // 10
        long_enough = len(self.lrs) > skip + 5
        lrs = self.lrs[skip:-5] if long_enough else list(self.lrs)
        losses = self.losses[skip:-5] if long_enough else list(self.losses)
        finite = next((i for i, v in enumerate(losses) if not math.isfinite(v)), len(losses))
        return valley(lrs[:finite], losses[:finite])


def lr_find(
    learner: Learner,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_it: int = 100,
    stop_div: bool = True,
    beta: float = 0.98,
    plot: str | os.PathLike | None = None,
    quiet: bool = False,
    stream: IO[str] | None = None,
) -> LRFindResult:
    """Run the finder on `learner` as it stands and return the curve and suggestion.

    The rate grows from `start_lr` to `end_lr` over `num_it` batches (cycling through the loader
    if it is shorter); training stops early once the smoothed loss exceeds four times its minimum
    (`stop_div`). The loss is smoothed by an exponential moving average (`beta`), debiased.
    `plot`: write the curve as a PNG there. `quiet`: no progress display (else on `stream`,
    default stdout). Everything the finder trained is undone afterwards.
    """
    if not 0 < start_lr < end_lr:
        raise TorsoError(f"lr_find needs 0 < start_lr < end_lr, got {start_lr} and {end_lr}")
    if num_it < 10:
        raise TorsoError(f"lr_find needs num_it of at least 10, got {num_it}")
    finder = LRFinder(
        start_lr, end_lr, num_it, stop_div=stop_div, beta=beta, show=not quiet, stream=stream
    )
    train_aside(learner, math.ceil(num_it / learner.batches_per_epoch()), start_lr, finder)
    if not finder.losses:
        raise TorsoError("the training loader yields no batches")
    result = LRFindResult(lrs=finder.lrs, losses=finder.losses, suggestion=finder.suggestion())
    if plot is not None:
        from torso.plots import plot_lr_find

        result.plot = plot_lr_find(result.lrs, result.losses, result.suggestion, plot)
    return result


def train_aside(learner: Learner, epochs: int, lr: float, callback: Callback) -> None:
    """Train `learner` for `epochs` at a constant `lr` with `callback` as its only callback (no
    validation, no saving), then undo it all: weights, optimiser, freezing, gradient scaler,
    random generators, history, epoch and the position in the current training call."""
    from torso.train.schedules import Phase, spread_learning_rate

    kept = ("callbacks", "valid_loader", "out", "history", "epoch", "phases", "phase_index")
    saved = {name: getattr(learner, name) for name in (*kept, "phase_epoch")}
    snapshot = state.snapshot(learner)
    aside = {"callbacks": [callback], "valid_loader": None, "out": None, "history": []}
    for name, value in aside.items():
        setattr(learner, name, value)
    try:
        lrs = spread_learning_rate(lr, len(learner.groups))
        learner.fit_phases([Phase(epochs, lrs, learner.frozen_to, schedule="constant")])
    finally:
        learner.optimizer.zero_grad(set_to_none=True)
        state.restore(learner, snapshot)
        for name, value in saved.items():
            setattr(learner, name, value)
        learner.stop_training = False


def find_learning_rate(learner: Learner, *, fine_tune: bool, **options: Any) -> LRFindResult:
    """What `torso train --lr-find` and `torso lr-find` run: the finder on the learner as its
    training will begin. `fine_tune` (a pretrained body): frozen to the head, as in the first
    phase of `Learner.fine_tune`; otherwise as it stands. The learner's freezing is the same
    afterwards. `options` go to `Learner.lr_find`."""
    frozen_to = learner.frozen_to
    if fine_tune:
        learner.freeze()
    try:
        return learner.lr_find(**options)
    finally:
        learner.freeze_to(frozen_to)
