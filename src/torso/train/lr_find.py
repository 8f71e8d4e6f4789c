"""The learning-rate finder (Smith 2015, as in fastai): train a few batches while the rate grows
exponentially, record the smoothed loss, and suggest a rate by the "valley" rule.

The valley rule: in the trimmed loss curve find the longest run of points in which every later
point has a lower loss than an earlier one (a longest decreasing subsequence, by dynamic
programming); the suggestion lies in the middle of its steepest part, at a third and a half of a
third of the way from its start to its end. The model, optimiser and random generators are put
back afterwards, so finding a rate does not change the training that follows.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from torso.errors import TorsoError

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


def lr_find(
    learner: Learner,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_it: int = 100,
    stop_div: bool = True,
    beta: float = 0.98,
    plot: str | os.PathLike | None = None,
) -> LRFindResult:
    """Run the finder on `learner`'s training data and return the curve and suggestion.

    The rate grows from `start_lr` to `end_lr` over `num_it` batches (cycling through the loader
    if it is shorter); training stops early once the smoothed loss exceeds four times its minimum
    (`stop_div`). The loss is smoothed by an exponential moving average (`beta`), debiased.
    Before suggesting, the first tenth and the last five points are dropped, and the curve is cut
    at the first non-finite loss. `plot`: write the curve as a PNG there.
    """
    if not 0 < start_lr < end_lr:
        raise TorsoError(f"lr_find needs 0 < start_lr < end_lr, got {start_lr} and {end_lr}")
    if num_it < 10:
        raise TorsoError(f"lr_find needs num_it of at least 10, got {num_it}")
    snapshot = learner.snapshot()
    lrs: list[float] = []
    losses: list[float] = []
    try:
        learner._train_mode()
        average, best, iteration = 0.0, math.inf, 0
        while iteration < num_it:
            for x, y in learner.train_loader:
                lr = start_lr * (end_lr / start_lr) ** (iteration / (num_it - 1))
                learner._set_hyper([lr] * len(learner.groups), None, None)
                x, y = learner._to_device(x), learner._to_device(y)
                loss = learner.task.loss(learner._call_model(x), y)
                learner.optimizer.zero_grad(set_to_none=True)
                value = loss.item()
                if math.isfinite(value):
                    loss.backward()
                    learner.optimizer.step()
                average = beta * average + (1 - beta) * value
                smoothed = average / (1 - beta ** (iteration + 1))
                lrs.append(lr)
                losses.append(smoothed)
                iteration += 1
                best = min(best, smoothed)
                if not math.isfinite(smoothed) or (stop_div and smoothed > 4 * best):
                    iteration = num_it
                if iteration >= num_it:
                    break
            else:
                if iteration == 0:
                    raise TorsoError("the training loader yields no batches")
    finally:
        learner.optimizer.zero_grad(set_to_none=True)
        learner.restore(snapshot)
    trimmed_lrs = lrs[num_it // 10 : -5] if len(lrs) > num_it // 10 + 5 else list(lrs)
    trimmed = losses[num_it // 10 : -5] if len(losses) > num_it // 10 + 5 else list(losses)
    finite = next((i for i, v in enumerate(trimmed) if not math.isfinite(v)), len(trimmed))
    suggestion = valley(trimmed_lrs[:finite], trimmed[:finite])
    result = LRFindResult(lrs=lrs, losses=losses, suggestion=suggestion)
    if plot is not None:
        from torso.tools.plots import plot_lr_find

        result.plot = plot_lr_find(lrs, losses, suggestion, plot)
    return result
