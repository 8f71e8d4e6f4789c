"""Measuring a model on a loader: the mean loss and the task's metrics (torchmetrics), and under
torchrun over a loader dealt out among the processes, every image counted once."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from torso import distributed
from torso.errors import TorsoError
from torso.tasks.base import Task


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable,
    task: Task,
    *,
    config: Any,
    call: Callable[[Any], torch.Tensor],
    to_device: Callable[[Any], Any],
    device: torch.device,
) -> dict[str, float]:
    """`{"valid_loss": ..., <metric>: ...}` of `model` over `batches` of `(x, y)`.

    `call(x)` runs the forward pass, `to_device` places a batch. `config` is what
    `task.metrics` reads (the run config); without one, or without its number of outputs, the
    number comes from the first batch's outputs `(N, num_outputs, ...)` and `config` is left as
    it is. Under torchrun a loader that gives each process its share (`ShardSampler`) is
    measured by all processes together and all get the same numbers.
    """
    shared = distributed.measured_together(batches, model)
    metrics = None
    model.eval()
    loss_sum, count = 0.0, 0
    for x, y in batches:
        x, y = to_device(x), to_device(y)
        outputs = call(x)
        size = batch_size(y)
        loss_sum = loss_sum + task.loss(outputs, y).detach().float() * size
        count += size
        if metrics is None:
            metrics = task_metrics(task, config, outputs, device, shared)
        predictions, targets = task.metric_inputs(outputs, y)
        for metric in metrics.values():
            metric.update(predictions, targets)
    if metrics is None:
        raise TorsoError("the validation loader yields no batches")
    loss_total = float(loss_sum)
    if shared:
        loss_total, count = distributed.sum_across([loss_total, count])
    results = {"valid_loss": loss_total / count}
    results.update({name: float(metric.compute()) for name, metric in metrics.items()})
    return results


def task_metrics(
    task: Task, config: Any, outputs: torch.Tensor, device: torch.device, shared: bool
) -> dict[str, nn.Module]:
    """The task's metrics on `device` (see `evaluate` for `config` and `outputs`)."""
    if config is None or (isinstance(config, Mapping) and config.get("num_outputs") is None):
        counted = int(outputs.shape[1]) if outputs.ndim > 1 else None
        config = {**(config or {}), "num_outputs": counted}  # a copy: the config stays as is
    metrics = {name: metric.to(device) for name, metric in task.metrics(config).items()}
    for metric in metrics.values():
        # torchmetrics gathers a metric's state from all processes whenever a process group
        # exists; that is right only when every process measured its own share of the loader.
        for part in metric.modules():
            if hasattr(part, "distributed_available_fn"):
                part.distributed_available_fn = lambda: shared
    return metrics


def batch_size(targets: Any) -> int:
    """The number of samples in a batch's targets (a tensor, or a sequence)."""
    if isinstance(targets, torch.Tensor):
        return int(targets.shape[0]) if targets.ndim else 1
    return len(targets)


def batches_in(loader: Iterable | None, what: str = "training") -> int:
    """The number of batches `loader` yields in one epoch; a TorsoError naming `what` data when
    there is no loader, it has no length or it yields nothing."""
    if loader is None:
        raise TorsoError(f"this Learner has no {what} data")
    try:
        length = len(loader)
    except TypeError:
        raise TorsoError(f"the {what} loader must have a length (len(loader))") from None
    if length == 0:
        raise TorsoError(f"the {what} loader yields no batches")
    return length
