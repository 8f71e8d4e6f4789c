"""Progress display: epoch, batch, loss, metrics and time left.

On a terminal it draws a rich progress bar per epoch and a table row per finished epoch; when
the output is a file or a pipe (logs, CI) it prints one plain line per epoch instead. An epoch
that trains only the head (the first of `fine_tune`) says so: `epoch 1/4 (head only)`. The
task's per-class columns (`Task.per_class_metrics`, e.g. Dice per class) stay in `metrics.csv`,
so an epoch is one line however many classes there are.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Collection
from typing import IO, TYPE_CHECKING

from torso.train.callbacks.base import Callback

if TYPE_CHECKING:
    from torso.train.learner import Learner


def format_seconds(seconds: float) -> str:
    """`75.2` → `'1:15'`, `3725` → `'1:02:05'`."""
    seconds = int(round(max(seconds, 0)))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def format_row(row: dict[str, float], hidden: Collection[str] = ()) -> str:
    """An epoch's row as `train_loss 0.4123  valid_loss ...  lr 1.00e-03  time 0:12` on one
    line, without `epoch` and the columns in `hidden`."""
    parts = []
    for key, value in row.items():
        if key == "epoch" or key in hidden:
            continue
        if key == "time":
            parts.append(f"time {format_seconds(value)}")
        elif key == "lr":
            parts.append(f"lr {value:.2e}")
        else:
            parts.append(f"{key} {value:.4f}")
    return "  ".join(parts)


def frozen_label(learner: Learner) -> str:
    """`" (head only)"` while only the last parameter group trains, `" (groups 3+ train)"`
    while a later group than the first is the first to train, else `""`."""
    first, count = getattr(learner, "frozen_to", 0), len(getattr(learner, "groups", ()))
    if first <= 0 or count < 2:
        return ""
    return " (head only)" if first >= count - 1 else f" (groups {first + 1}+ train)"


def hidden_metrics(learner: Learner) -> set[str]:
    """The task's per-class metric columns (`Task.per_class_metrics`), left out of the line."""
    task, config = getattr(learner, "task", None), getattr(learner, "config", None)
    if task is None or config is None:
        return set()
    return set(task.per_class_metrics(config))


class Progress(Callback):
    """Shows training progress on `stream` (default stdout).

    Args:
        stream: where to write.
        rich_display: force (True) or forbid (False) the rich display; by default it is used only
            when `stream` is a terminal.
    """

    def __init__(self, stream: IO[str] | None = None, rich_display: bool | None = None) -> None:
        self.stream = stream
        self.rich_display = rich_display
        self._progress = None
        self._task_id = None
        self._started = 0.0
        self._shown = 0.0
        self._epochs_done_here = 0
        self._hidden: set[str] = set()
        self._frozen = ""

    def _output(self) -> IO[str]:
        return self.stream or sys.stdout

    def before_fit(self, learner: Learner) -> None:
        use_rich = self.rich_display
        if use_rich is None:
            use_rich = getattr(self._output(), "isatty", lambda: False)()
        self._started = time.perf_counter()
        self._epochs_done_here = 0
        self._hidden = hidden_metrics(learner)
        if use_rich:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            console = Console(file=self._output())
            self._progress = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeRemainingColumn(),
                console=console,
                transient=True,
            )
            self._progress.start()

    def before_epoch(self, learner: Learner) -> None:
        self._frozen = frozen_label(learner)
        if self._progress is not None:
            description = f"epoch {learner.epoch + 1}/{learner.total_epochs}{self._frozen}"
            if self._task_id is not None:
                self._progress.remove_task(self._task_id)
            self._task_id = self._progress.add_task(
                description, total=learner.num_batches, status=""
            )

    def after_batch(self, learner: Learner) -> None:
        loss = learner.loss
        if self._progress is not None and self._task_id is not None:
            # Reading the loss waits for the device: refresh the number a few times a second.
            now = time.perf_counter()
            if now - self._shown >= 0.25 or learner.batch_index + 1 == learner.num_batches:
                self._shown = now
                self._progress.update(self._task_id, advance=1, status=f"loss {float(loss):.4f}")
            else:
                self._progress.update(self._task_id, advance=1)

    def after_epoch(self, learner: Learner) -> None:
        row = learner.history[-1]
        self._epochs_done_here += 1
        remaining = learner.total_epochs - learner.epoch - 1
        elapsed = time.perf_counter() - self._started
        left = elapsed / self._epochs_done_here * remaining
        line = (
            f"epoch {int(row['epoch'])}/{learner.total_epochs}{self._frozen}  "
            f"{format_row(row, self._hidden)}"
        )
        if remaining > 0:
            line += f"  left {format_seconds(left)}"
        if self._hidden and self._epochs_done_here == 1:
            line += f"\n  ({len(self._hidden)} per-class columns in metrics.csv)"
        if self._progress is not None:
            self._progress.console.print(line)
        else:
            print(line, file=self._output(), flush=True)

    def after_fit(self, learner: Learner) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
            self._task_id = None
