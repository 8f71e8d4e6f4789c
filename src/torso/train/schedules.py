"""Learning-rate and momentum schedules, and how a rate spreads over parameter groups.

These follow fastai's meaning so that numbers from the book carry over:

* a `slice(low, high)` spreads geometrically from `low` (earliest group) to `high` (the head);
  `slice(high)` gives `high / 10` to every group but the last, which gets `high`;
  a plain number is used for every group;
* one cycle: cosine warm-up from `lr_max / div` to `lr_max` over the first `pct_start` of the
  steps, then cosine annealing down to `lr_max / div_final`; momentum moves the other way
  (0.95 → 0.85 → 0.95 by default).

A `Phase` is one training call's schedule (a fine-tune is two), as the training state saves it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from torso.errors import TorsoError

LearningRate = float | slice | Sequence[float]


def spread_learning_rate(lr: LearningRate, num_groups: int) -> list[float]:
    """One learning rate per parameter group, from a number, a slice or a list.

    `spread_learning_rate(slice(1e-5, 1e-3), 3)` → `[1e-5, 1e-4, 1e-3]`;
    `spread_learning_rate(slice(1e-3), 3)` → `[1e-4, 1e-4, 1e-3]`;
    `spread_learning_rate(1e-3, 3)` → `[1e-3, 1e-3, 1e-3]`.
    """
    if num_groups < 1:
        raise ValueError(f"num_groups must be at least 1, got {num_groups}")
    if isinstance(lr, slice):
        if lr.step is not None:
            raise TorsoError(f"a learning-rate slice takes no step, got {lr}")
        if lr.start is None:
            if lr.stop is None:
                raise TorsoError("a learning-rate slice needs at least an upper value")
            high = float(lr.stop)
            rates = [high / 10] * (num_groups - 1) + [high]
        else:
            rates = geometric_steps(float(lr.start), float(lr.stop), num_groups)
    elif isinstance(lr, int | float):
        rates = [float(lr)] * num_groups
    else:
        rates = [float(value) for value in lr]
        if len(rates) != num_groups:
            raise TorsoError(
                f"got {len(rates)} learning rates for {num_groups} parameter groups; "
                "give one number, a slice, or one rate per group"
            )
    for rate in rates:
        if not rate > 0 or math.isinf(rate):
            raise TorsoError(f"learning rates must be positive and finite, got {rates}")
    return rates


def geometric_steps(start: float, stop: float, count: int) -> list[float]:
    """`count` values from `start` to `stop` with a constant ratio between neighbours."""
    if count == 1:
        return [stop]
    if start <= 0 or stop <= 0:
        raise TorsoError(f"learning rates must be positive, got slice({start}, {stop})")
    ratio = (stop / start) ** (1 / (count - 1))
    return [start * ratio**index for index in range(count)]


def cosine_between(start: float, end: float, position: float) -> float:
    """Half a cosine from `start` (position 0) to `end` (position 1)."""
    return start + (1 + math.cos(math.pi * (1 - position))) * (end - start) / 2


def two_phase_cosine(first: float, middle: float, last: float, pct_start: float, position: float):
    """Cosine from `first` to `middle` over `[0, pct_start)`, then from `middle` to `last`."""
    if position < pct_start:
        return cosine_between(first, middle, position / pct_start)
    rest = 1 - pct_start
    return cosine_between(middle, last, (position - pct_start) / rest if rest > 0 else 1.0)


def one_cycle_learning_rate(
    lr_max: float,
    position: float,
    *,
    div: float = 25.0,
    div_final: float = 1e5,
    pct_start: float = 0.25,
) -> float:
    """The one-cycle learning rate at `position` (fraction of the training steps done, 0..1)."""
    return two_phase_cosine(lr_max / div, lr_max, lr_max / div_final, pct_start, position)


def one_cycle_momentum(
    position: float,
    *,
    moms: tuple[float, float, float] = (0.95, 0.85, 0.95),
    pct_start: float = 0.25,
) -> float:
    """The one-cycle momentum (Adam's beta1) at `position`: high → low → high."""
    return two_phase_cosine(moms[0], moms[1], moms[2], pct_start, position)


@dataclass
class Phase:
    """One training call's schedule over some epochs, as saved for resuming.

    `lrs` holds one rate per parameter group (the peak rate for one-cycle); `frozen_to` is the
    first trainable group during the phase; `weight_decay` None means the Learner's own.
    """

    epochs: int
    lrs: list[float]
    frozen_to: int
    schedule: str = "one_cycle"  # or "constant"
    div: float = 25.0
    div_final: float = 1e5
    pct_start: float = 0.25
    moms: list[float] = field(default_factory=lambda: [0.95, 0.85, 0.95])
    weight_decay: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.epochs, int) or self.epochs < 0:
            raise TorsoError(f"epochs must be a whole number >= 0, got {self.epochs}")
        if not 0 <= self.pct_start <= 1:
            raise TorsoError(f"pct_start must be between 0 and 1, got {self.pct_start}")
        self.moms = list(self.moms)

    def hyper_parameters(self, step: int, total: int) -> tuple[list[float], float | None]:
        """Each group's learning rate and Adam's beta1 (None: unchanged) at optimiser step
        `step` of `total` in this phase."""
        if self.schedule == "constant":
            return list(self.lrs), None
        position = step / total
        options = {"div": self.div, "div_final": self.div_final, "pct_start": self.pct_start}
        lrs = [one_cycle_learning_rate(lr, position, **options) for lr in self.lrs]
        moms = (self.moms[0], self.moms[1], self.moms[2])
        return lrs, one_cycle_momentum(position, moms=moms, pct_start=self.pct_start)


def fine_tune_phases(
    epochs: int,
    base_lr: float,
    num_groups: int,
    *,
    freeze_epochs: int = 1,
    lr_mult: float = 100,
    pct_start: float = 0.3,
    div: float = 5.0,
    weight_decay: float | None = None,
) -> list[Phase]:
    """fastai's `fine_tune` for a model of `num_groups` parameter groups: `freeze_epochs` of
    one-cycle on the head (the last group) at `slice(base_lr)` with pct_start 0.99, then with
    `base_lr` halved, everything unfrozen, `epochs` of one-cycle at `slice(base_lr / lr_mult,
    base_lr)` with `pct_start` and `div`. A phase of 0 epochs is left out."""
    phases = []
    if freeze_epochs > 0:
        rates = spread_learning_rate(slice(base_lr), num_groups)
        frozen = {"frozen_to": num_groups - 1, "pct_start": 0.99, "weight_decay": weight_decay}
        phases.append(Phase(freeze_epochs, rates, **frozen))
    base_lr /= 2
    if epochs > 0:
        rates = spread_learning_rate(slice(base_lr / lr_mult, base_lr), num_groups)
        unfrozen = {"pct_start": pct_start, "div": div, "weight_decay": weight_decay}
        phases.append(Phase(epochs, rates, frozen_to=0, **unfrozen))
    return phases
