"""TensorBoard logging of each epoch's row (needs the `tensorboard` package)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING

from torso.errors import TorsoError
from torso.train.callbacks.base import Callback

if TYPE_CHECKING:
    from torso.train.learner import Learner


def tensorboard_available() -> bool:
    """Whether the `tensorboard` package is installed."""
    return importlib.util.find_spec("tensorboard") is not None


class TensorBoard(Callback):
    """Writes every value of the epoch rows as scalars to `folder` (default `<run>/tensorboard`)."""

    def __init__(self, folder: str | os.PathLike | None = None) -> None:
        if not tensorboard_available():
            raise TorsoError(
                "TensorBoard logging needs the 'tensorboard' package: pip install tensorboard"
            )
        self.folder = Path(folder) if folder is not None else None
        self._writer = None

    def before_fit(self, learner: Learner) -> None:
        from torch.utils.tensorboard import SummaryWriter

        folder = self.folder or Path(learner.out or ".") / "tensorboard"
        self._writer = SummaryWriter(log_dir=str(folder))

    def after_epoch(self, learner: Learner) -> None:
        row = learner.history[-1]
        if self._writer is not None:
            for key, value in row.items():
                if key != "epoch":
                    self._writer.add_scalar(key, value, int(row["epoch"]))
            self._writer.flush()

    def after_fit(self, learner: Learner) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
