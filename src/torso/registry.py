"""The task registry: task name → the module and class that implement it.

A task is one module (see `torso.tasks.base.Task`) plus one entry here. Modules are imported only
when their task is asked for, by name, so the registry imports nothing of torso beyond errors:
every layer may use it (`torso.data` resolves `load_data(..., task="segment")` through it)
without depending on the task modules themselves.

A task outside torso registers itself the same way:

>>> from torso.registry import register_task
>>> register_task("count", "my_package.count_task:CountTask")
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from torso.errors import TorsoError

#: task name -> "module:Class"
TASKS: dict[str, str] = {
    "classify": "torso.tasks.classify:ClassifyTask",
    "multilabel": "torso.tasks.multilabel:MultilabelTask",
    "regress": "torso.tasks.regress:RegressTask",
    "segment": "torso.tasks.segment:SegmentTask",
    "siamese": "torso.tasks.siamese:SiameseTask",
    "detect": "torso.tasks.detect:DetectTask",
}


def register_task(name: str, target: str) -> None:
    """Make task `name` available; `target` is `"module:Class"` (imported when first used)."""
    if ":" not in target:
        raise TorsoError(
            f"register_task({name!r}): give the class as 'module:Class', not {target!r}"
        )
    TASKS[name] = target


def task_names() -> list[str]:
    """Names of the registered tasks whose module can be imported."""
    names = []
    for name, target in TASKS.items():
        module = target.split(":", 1)[0]
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if found:
            names.append(name)
    return names


def task_class(name: str) -> type:
    """The class that implements task `name`."""
    if name not in TASKS:
        raise TorsoError(f"unknown task {name!r}; choose one of {', '.join(task_names())}")
    module_name, class_name = TASKS[name].split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name:
            raise
        raise TorsoError(f"task {name!r} is not available: no module {module_name!r}") from None
    return getattr(module, class_name)


def get_task(name: str, **options: Any):
    """The task called `name`, built with `options` (e.g. `threshold=0.3` for multilabel)."""
    cls = task_class(name)
    try:
        return cls(**options)
    except TypeError as error:
        raise TorsoError(f"bad option for task {name!r}: {error}") from None
