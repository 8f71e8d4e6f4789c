"""Tasks: one module each (classification, multi-label, regression, segmentation, Siamese pairs,
detection), found by name through `torso.registry`.

`get_task("classify", label_smoothing=0.1)` returns a `Task` (see `torso.tasks.base`). The
package itself imports no task module, so finding a task by name costs nothing until it is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torso.registry import TASKS, get_task, register_task, task_names

if TYPE_CHECKING:  # pragma: no cover
    from torso.tasks.base import Task  # noqa: F401

available_tasks = task_names

__all__ = ["TASKS", "Task", "available_tasks", "get_task", "register_task", "task_names"]


def __getattr__(name: str) -> Any:
    if name == "Task":
        from torso.tasks.base import Task

        return Task
    raise AttributeError(f"module 'torso.tasks' has no attribute {name!r}")
