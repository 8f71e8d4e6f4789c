"""Save-arguments: write a run's arguments once its first epoch has ended."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torso.files import atomic_write
from torso.train.callbacks.base import Callback

if TYPE_CHECKING:
    from torso.train.learner import Learner


class SaveArguments(Callback):
    """Writes `arguments` as JSON to `path` (atomically) at the end of the first epoch, before
    that epoch's training state is saved. A run that fails or is killed earlier leaves no such
    file, so its folder does not look like a run that `--resume` could continue."""

    def __init__(self, path: str | os.PathLike, arguments: dict[str, Any]) -> None:
        self.path, self.arguments = Path(path), arguments

    def after_epoch(self, learner: Learner) -> None:
        if not self.path.exists():
            atomic_write(self.path, json.dumps(self.arguments, indent=2) + "\n")
