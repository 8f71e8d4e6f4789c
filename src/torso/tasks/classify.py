"""Single-label classification: one class per image, cross-entropy, accuracy."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy

from torso.errors import TorsoError
from torso.tasks.base import Task


class ClassifyTask(Task):
    """Cross-entropy (with optional label smoothing); accuracy, error rate and top-k accuracy.

    Targets are class indices, int64 (N,); outputs are logits (N, num_classes).

    Options:
        label_smoothing: in [0, 1), as in `torch.nn.functional.cross_entropy`.
        top_k: also report top-k accuracy when there are more than `top_k` classes.
    """

    name = "classify"
    main_metric = "accuracy"
    higher_is_better = True

    def __init__(self, label_smoothing: float = 0.0, top_k: int = 5) -> None:
        if not 0 <= label_smoothing < 1:
            raise TorsoError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if top_k < 1:
            raise TorsoError(f"top_k must be at least 1, got {top_k}")
        super().__init__(label_smoothing=float(label_smoothing), top_k=int(top_k))

    # -- data --------------------------------------------------------------------------------
    def data_layout(self):
        """Class folders (or a CSV of one label column); targets int64 class indices."""
        from torso.data import ClassTargets, DataLayout, read_classes

        return DataLayout(read=read_classes, targets=ClassTargets())

    def loss(
        self, outputs: torch.Tensor, targets: torch.Tensor, reduction: str = "mean"
    ) -> torch.Tensor:
        return F.cross_entropy(
            outputs.float(),
            targets.long(),
            label_smoothing=self.options["label_smoothing"],
            reduction=reduction,
        )

    def metrics(self, config: dict[str, Any]) -> dict[str, Metric]:
        num_classes = int(config["num_outputs"])
        metrics: dict[str, Metric] = {
            "accuracy": MulticlassAccuracy(num_classes, average="micro"),
            "error_rate": 1 - MulticlassAccuracy(num_classes, average="micro"),
        }
        top_k = self.options["top_k"]
        if num_classes > top_k > 1:
            metrics[f"top_{top_k}_accuracy"] = MulticlassAccuracy(
                num_classes, top_k=top_k, average="micro"
            )
        return metrics

    def activation(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.float().softmax(dim=1)

    def decode(self, activations: torch.Tensor) -> torch.Tensor:
        return activations.argmax(dim=1)

    def describe(
        self, activations: torch.Tensor, classes: list[str] | None
    ) -> list[dict[str, Any]]:
        probabilities, indices = activations.max(dim=1)
        names = classes or [str(index) for index in range(activations.shape[1])]
        return [
            {"prediction": names[int(index)], "probability": round(float(probability), 6)}
            for probability, index in zip(probabilities, indices, strict=True)
        ]
