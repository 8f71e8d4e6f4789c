"""The run config of a Learner that was given none, so that a model trained in Python saves,
loads and predicts as one from `torso train` does.

What it takes and from where:
- task: the Learner's task (its name and options);
- backbone, stats: the model's body (`model.body.name`, `model.body.stats`);
- num_outputs: the model's output for a batch (dimension 1: classes, labels, values or mask
  classes);
- size, in_channels: the first training batch (`(N, C, H, W)` images);
- classes, resize: the data when it says them (`torso.data.load_data`'s `DataLoaders`, given to
  the Learner as its training data, or a loader whose dataset has `classes`), else none
  (predictions are named "0", "1", ...) and "squish".

`torso.data.load_data`'s `DataLoaders` gives everything but the model's facts before training;
plain loaders give the rest with their first batch. A model that the config cannot rebuild
(another head than `create_model`'s default, a body of the user's own) gets no config, and
`Learner.save_model` says so.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from torso.config import RunConfig
from torso.errors import TorsoError
from torso.tasks.base import Task


def data_facts(data: Any) -> dict[str, Any]:
    """What `data` (a `DataLoaders` or a loader) says about the run: classes, size, channels,
    resize; only what it has."""
    facts: dict[str, Any] = {}
    dataset = getattr(data, "dataset", None)  # a loader over e.g. torchvision's ImageFolder
    classes = (
        getattr(data, "classes", None)
        or getattr(data, "target_names", None)
        or getattr(dataset, "classes", None)
    )
    if classes is not None:
        facts["classes"] = list(classes)
    for name in ("size", "in_channels", "resize", "num_outputs"):
        value = getattr(data, name, None)
        if value is not None:
            facts[name] = value
    return facts


def batch_facts(x: Any, pred: Any) -> dict[str, Any]:
    """Size, channels and outputs from a batch of images `x` `(N, C, H, W)` (or a pair of
    them) and the model's output `pred` for it; {} when they are not such tensors."""
    first = x[0] if isinstance(x, tuple | list) else x
    out = pred[0] if isinstance(pred, tuple | list) else pred
    if not isinstance(first, torch.Tensor) or first.dim() != 4:
        return {}
    if not isinstance(out, torch.Tensor) or out.dim() < 2:
        return {}
    height, width = first.shape[-2:]
    return {
        "size": (int(height), int(width)),
        "in_channels": int(first.shape[1]),
        "num_outputs": int(out.shape[1]),
    }


def infer_config(model: nn.Module, task: Task, facts: dict[str, Any]) -> RunConfig | None:
    """A `RunConfig` from the model, the task and `facts` (`data_facts` + `batch_facts`), or
    None when something needed is unknown."""
    body = getattr(model, "body", None)
    backbone = getattr(body, "name", None)
    needed = ("size", "in_channels", "num_outputs")
    if not isinstance(backbone, str) or any(name not in facts for name in needed):
        return None
    classes = facts.get("classes")
    if classes is not None and len(classes) != facts["num_outputs"]:
        classes = None
    try:
        config = RunConfig(
            task=task.name,
            backbone=backbone,
            num_outputs=facts["num_outputs"],
            size=facts["size"],
            in_channels=facts["in_channels"],
            classes=classes,
            resize=facts.get("resize", "squish"),
            stats=getattr(body, "stats", None),
            task_options=getattr(task, "options", {}),
        )
    except TorsoError:
        return None
    complete = getattr(task, "complete_config", None)
    return complete(config, model) if complete is not None else config


def check_rebuilds(model: nn.Module, task: Task, config: RunConfig) -> None:
    """A `TorsoError` if the model that `config` describes has other weights than `model`
    (then `torso.load` could not load it): another head, another body."""
    try:
        rebuilt = task.build_model(config, pretrained=False)
    except TorsoError as error:
        raise TorsoError(f"cannot save a loadable model: {error}") from None
    mine = {name: tuple(value.shape) for name, value in model.state_dict().items()}
    theirs = {name: tuple(value.shape) for name, value in rebuilt.state_dict().items()}
    if mine != theirs:
        raise TorsoError(
            "cannot save a loadable model: this model is not what "
            f"create_model({config.backbone!r}, {config.num_outputs}) builds (another head or "
            "body); give the Learner a RunConfig with its head_options"
        )


def split_loaders(train: Any, valid: Any, *, given: Any) -> tuple[Any, Any, dict[str, Any]]:
    """The training and validation loaders (`train` may be `load_data`'s `DataLoaders`, with
    no `valid`: its two loaders) and, when no config is `given`, the facts the data tells."""
    data = train
    if valid is None and hasattr(train, "train") and hasattr(train, "valid"):
        train, valid = train.train, train.valid
    return train, valid, (data_facts(data) if given is None else {})


def check_saveable(
    model: nn.Module, task: Task, config: RunConfig | None, *, inferred: bool
) -> None:
    """A `TorsoError` unless `config` describes `model` well enough to save a loadable run (a
    config the Learner made itself is checked by rebuilding the model from it)."""
    if config is None:
        raise TorsoError(
            "cannot save a loadable model: this Learner was given no config and cannot make "
            "one (it makes one from its first training batch and a model from create_model); "
            "give it config=RunConfig(...)"
        )
    if inferred:
        check_rebuilds(model, task, config)
