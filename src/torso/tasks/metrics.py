"""The tasks' own torchmetrics metrics: `ForegroundDice` (segmentation) and `MapValue`
(detection).

They live apart from the task modules, which import this module inside `Task.metrics`: a task
module is imported to list its command-line options (`torso train --help`) and must not import
torchmetrics, which takes seconds (it imports torchvision, scipy and matplotlib).
"""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import Metric


class ForegroundDice(Metric):
    """Dice averaged over the classes after the first (the background), over all pixels of
    all updates together; void pixels (`ignore_index`) left out, and classes absent from both
    the truth and the prediction (0 when every foreground class is).

    `update(predictions, targets)` takes class ids of the same shape, e.g. `(N, H, W)`.
    """

    full_state_update = False

    def __init__(self, num_classes: int, ignore_index: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_classes, self.ignore_index = num_classes, ignore_index
        for name in ("overlap", "predicted", "actual"):
            self.add_state(name, torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, predictions: torch.Tensor, targets: torch.Tensor) -> None:
        valid = targets != self.ignore_index
        predicted, actual = predictions[valid].long(), targets[valid].long()
        count = self.num_classes
        self.overlap += torch.bincount(actual[predicted == actual], minlength=count)[:count]
        self.predicted += torch.bincount(predicted, minlength=count)[:count]
        self.actual += torch.bincount(actual, minlength=count)[:count]

    def compute(self) -> torch.Tensor:
        total = (self.predicted + self.actual)[1:].double()
        present = total > 0
        if not present.any():
            return torch.tensor(0.0)
        dice = 2 * self.overlap[1:].double()[present] / total[present]
        return dice.mean().float()


class MapValue(Metric):
    """One number of COCO's mean average precision (torchmetrics' `MeanAveragePrecision`,
    boxes xyxy, per class too) over the images given to the `MapValue` made with `feeds=True`;
    the others made with the same `shared` dict read its result, computed once.

    `update(predictions, targets)` takes one dict per image (`boxes`, `scores`, `labels`;
    `boxes`, `labels`); the feeding metric keeps them on the CPU. `compute()` gives
    `result[key]`, or with `index` that class's entry of `result[key]` (-1 for a class absent
    from truth and predictions).

    Under torchrun, when the processes measured the validation set together, each its own share
    (torso's evaluation says so through `distributed_available_fn`), the images are first
    gathered from every process, each image whole, and put back in the order the validation
    sampler dealt them (process r held positions r, r + W, ...): every process then computes
    the mAP of the whole set, equal to a single process's. (torchmetrics' own gathering would
    exchange the images tensor by tensor, which breaks when the shares differ in length.)
    """

    full_state_update = False

    def __init__(self, shared: dict, key: str, index: int | None = None, feeds: bool = False):
        super().__init__()
        self.feeds = feeds
        if feeds:
            shared["images"], shared["result"] = [], None
        self._shared, self.key, self.index = shared, key, index

    def update(self, predictions: list[dict], targets: list[dict]) -> None:
        if self.feeds:
            for predicted, truth in zip(predictions, targets, strict=True):
                self._shared["images"].append((_on_cpu(predicted), _on_cpu(truth)))
            self._shared["result"] = None

    def compute(self) -> torch.Tensor:
        if self._shared["result"] is None:
            images = self._shared["images"]
            if self.distributed_available_fn():
                images = _gathered_in_order(images)
            self._shared["result"] = _mean_average_precision(images)
        result = self._shared["result"]
        if self.index is None:
            return result[self.key]
        classes = result["classes"].flatten().tolist()
        if self.index not in classes:  # a class absent from truth and predictions
            return torch.tensor(-1.0)
        return result[self.key].flatten()[classes.index(self.index)]

    def reset(self) -> None:
        super().reset()
        if self.feeds:
            self._shared["images"], self._shared["result"] = [], None


def _on_cpu(record: dict[str, Any]) -> dict[str, Any]:
    return {key: value.detach().cpu() for key, value in record.items()}


def _mean_average_precision(images: list[tuple[dict, dict]]) -> dict[str, torch.Tensor]:
    """torchmetrics' result over `(prediction, truth)` pairs, computed here, in this process."""
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(box_format="xyxy", class_metrics=True, sync_on_compute=False)
    if images:
        metric.update([p for p, _ in images], [t for _, t in images])
    return metric.compute()


def _gathered_in_order(share: list[Any]) -> list[Any]:
    """Every process's `share` in the order of a sampler that dealt position i to process
    i mod W (as `torso.distributed.gather_objects_in_order`, which this layer may not import)."""
    import torch.distributed as dist

    pieces: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(pieces, share)
    ordered: list[Any] = [None] * sum(len(piece) for piece in pieces)
    for position, piece in enumerate(pieces):
        ordered[position :: len(pieces)] = piece
    return ordered
