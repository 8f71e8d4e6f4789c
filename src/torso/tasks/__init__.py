"""Tasks: one module each (classification, multi-label, regression, segmentation, Siamese pairs),
found by name through `torso.registry`.

`get_task("classify", label_smoothing=0.1)` returns a `Task` (see `torso.tasks.base`).
"""

from __future__ import annotations

from torso.registry import TASKS, get_task, register_task, task_names
from torso.tasks.base import Task, TaskOption

available_tasks = task_names

__all__ = [
    "TASKS",
    "Task",
    "TaskOption",
    "available_tasks",
    "get_task",
    "register_task",
    "task_names",
]
