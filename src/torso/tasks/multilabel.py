"""Multi-label classification: any number of labels per image, one sigmoid per label."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics import Metric
from torchmetrics.classification import MultilabelAccuracy, MultilabelF1Score

from torso.config import RunConfig
from torso.errors import TorsoError
from torso.tasks.base import Task, TaskOption, output_names
from torso.tasks.classify import class_probabilities


class MultilabelTask(Task):
    """Binary cross-entropy on logits; accuracy over all labels and F1, at a threshold.

    Targets are 0/1 floats (N, K); outputs are logits (N, K).

    Options:
        threshold: a label is predicted when its probability is at least this (default 0.5).
    """

    name = "multilabel"
    main_metric = "f1"
    higher_is_better = True
    cli_options = (
        TaskOption("threshold", float, 0.5, "probability from which a label is predicted (0.5)"),
    )
    output_meaning = "label scores (logits) (N, K); sigmoid gives probabilities"
    output_activation = "sigmoid"

    def __init__(self, threshold: float = 0.5) -> None:
        if not 0 < threshold < 1:
            raise TorsoError(f"threshold must be between 0 and 1, got {threshold}")
        super().__init__(threshold=float(threshold))

    # -- data --------------------------------------------------------------------------------
    def data_layout(self):
        """A CSV (default `labels.csv`) of one column of labels separated by a delimiter;
        targets float32 `(K,)` of 0/1."""
        from torso.data import DataLayout, LabelTargets, read_labels

        return DataLayout(read=read_labels, targets=LabelTargets())

    def loss(
        self, outputs: torch.Tensor, targets: torch.Tensor, reduction: str = "mean"
    ) -> torch.Tensor:
        losses = F.binary_cross_entropy_with_logits(
            outputs.float(), targets.float(), reduction="none"
        )
        if reduction == "none":
            return losses.mean(dim=1)
        return losses.mean() if reduction == "mean" else losses.sum()

    def metrics(self, config: RunConfig) -> dict[str, Metric]:
        num_labels, _ = output_names(config)
        threshold = self.options["threshold"]
        return {
            "accuracy": MultilabelAccuracy(num_labels, threshold=threshold, average="micro"),
            "f1": MultilabelF1Score(num_labels, threshold=threshold, average="micro"),
        }

    def metric_inputs(
        self, outputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Probabilities, never logits: torchmetrics guesses logits from the value range.
        return self.activation(outputs), targets.round().long()

    def activation(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.float().sigmoid()

    def decode(self, activations: torch.Tensor) -> torch.Tensor:
        return activations >= self.options["threshold"]

    def describe(
        self, activations: torch.Tensor, classes: list[str] | None
    ) -> list[dict[str, Any]]:
        """`{"prediction": "red blue", "p_red": 0.97, "p_green": 0.02, "p_blue": 0.88}`: the
        labels at or above the threshold (space-separated), then each label's probability."""
        names = classes or [str(index) for index in range(activations.shape[1])]
        records = []
        for row in activations:
            chosen = [
                name for name, p in zip(names, row, strict=True) if p >= self.options["threshold"]
            ]
            record: dict[str, Any] = {"prediction": " ".join(chosen)}
            record.update(class_probabilities(row, names))
            records.append(record)
        return records
