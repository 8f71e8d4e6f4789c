"""`torso.load(path)`: a saved model, ready to predict, from `model.safetensors` + `torso.json`."""

from __future__ import annotations

import os

import torch

from torso.tasks import get_task
from torso.train.checkpoint import load_model
from torso.train.learner import Learner


def load(path: str | os.PathLike, *, device: str | torch.device | None = None) -> Learner:
    """Load the model saved in folder `path` (a run folder or its `best/`) as a Learner without
    data: `torso.load("runs/pets").predict(["cat.jpg"])`.

    The architecture is rebuilt by the task from `torso.json`; weights come from safetensors;
    nothing is unpickled. A missing, truncated or altered file raises `TorsoError`.
    """
    model, config = load_model(path)
    task = get_task(config["task"], **(config.get("task_options") or {}))
    return Learner(model, task=task, config=config, device=device or "cpu")
