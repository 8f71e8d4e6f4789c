"""Tasks: one module each (classification, multi-label, regression, ...), found by name.

`get_task("classify", label_smoothing=0.1)` returns a `Task` (see `torso.tasks.base`).
Other tasks register themselves by adding their module to `TASK_MODULES`.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from torso.errors import TorsoError
from torso.tasks.base import Task

# task name -> (module, class name); modules are imported only when a task is asked for.
TASK_MODULES: dict[str, tuple[str, str]] = {
    "classify": ("torso.tasks.classify", "ClassifyTask"),
    "multilabel": ("torso.tasks.multilabel", "MultilabelTask"),
    "regress": ("torso.tasks.regress", "RegressTask"),
    "segment": ("torso.tasks.segment", "SegmentTask"),
    "siamese": ("torso.tasks.siamese", "SiameseTask"),
}


def available_tasks() -> list[str]:
    """Names of the tasks whose module is installed."""
    names = []
    for name, (module, _) in TASK_MODULES.items():
        if importlib.util.find_spec(module) is not None:
            names.append(name)
    return names


def get_task(name: str, **options: Any) -> Task:
    """The task called `name`, built with `options` (e.g. `threshold=0.3` for multilabel)."""
    if name not in TASK_MODULES:
        raise TorsoError(f"unknown task {name!r}; choose one of {', '.join(available_tasks())}")
    module_name, class_name = TASK_MODULES[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name:
            raise
        raise TorsoError(f"task {name!r} is not available in this version of torso") from None
    try:
        return getattr(module, class_name)(**options)
    except TypeError as error:
        raise TorsoError(f"bad option for task {name!r}: {error}") from None


__all__ = ["Task", "TASK_MODULES", "available_tasks", "get_task"]
