"""CSV log: one row per epoch in `metrics.csv`, rewritten whole (atomically) after each epoch,
so a resumed run continues the same file."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

from torso.files import atomic_write
from torso.train.callbacks.base import Callback

if TYPE_CHECKING:
    from torso.train.learner import Learner


def history_to_csv(history: list[dict[str, float]]) -> str:
    """Rows (dicts) as CSV text; columns in order of first appearance."""
    columns: list[str] = []
    for row in history:
        columns.extend(key for key in row if key not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return buffer.getvalue()


class CSVLog(Callback):
    """Writes the Learner's history to `path` (default `<run folder>/metrics.csv`)."""

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path is not None else None

    def _target(self, learner: Learner) -> Path | None:
        if self.path is not None:
            return self.path
        return Path(learner.out) / "metrics.csv" if learner.out is not None else None

    def after_epoch(self, learner: Learner) -> None:
        target = self._target(learner)
        if target is not None:
            atomic_write(target, history_to_csv(learner.history).encode())
