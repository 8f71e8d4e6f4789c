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
    """One number of a `MeanAveragePrecision` shared with other `MapValue`s: the one made with
    `feeds=True` receives the updates (and holds the shared metric, so `.to(device)` moves it);
    the others only read its result, computed once."""

    full_state_update = False

    def __init__(self, shared: dict, key: str, index: int | None = None, feeds: bool = False):
        super().__init__()
        self.feeds = feeds
        if feeds:
            self.average_precision = shared["metric"]
        self._shared, self.key, self.index = shared, key, index

    def update(self, predictions: list[dict], targets: list[dict]) -> None:
        if self.feeds:
            self._shared["metric"].update(predictions, targets)
            self._shared["result"] = None

    def compute(self) -> torch.Tensor:
        if self._shared.get("result") is None:
            self._shared["result"] = self._shared["metric"].compute()
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
            self._shared["metric"].reset()
            self._shared["result"] = None
