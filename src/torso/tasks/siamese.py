"""Siamese pairs: do two images show the same class? Cross-entropy over (different, same).

Batches are `((images_a, images_b), targets)` with targets int64 `(N,)`, 1 = same, 0 = different
(`torso.data.load_data(path, task="siamese")`); outputs are logits `(N, 2)` of a
`torso.models.siamese.SiameseModel`.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy

from torso.errors import TorsoError
from torso.tasks.base import Task

PAIR_CLASSES = ("different", "same")


class SiameseTask(Task):
    """Cross-entropy on same/different (optional label smoothing); accuracy and error rate.

    Options:
        label_smoothing: in [0, 1), as in `torch.nn.functional.cross_entropy`.
    """

    name = "siamese"
    main_metric = "accuracy"
    higher_is_better = True

    def __init__(self, label_smoothing: float = 0.0) -> None:
        if not 0 <= label_smoothing < 1:
            raise TorsoError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        super().__init__(label_smoothing=float(label_smoothing))

    # -- data --------------------------------------------------------------------------------
    def data_layout(self):
        """Classification's data (class folders or a CSV of one label column), drawn as
        same/different pairs; targets int64, 1 same, 0 different."""
        from torso.data import ClassTargets, DataLayout, read_classes

        return DataLayout(read=read_classes, targets=ClassTargets(), pairs=True)

    def build_model(self, config: dict[str, Any], *, pretrained: bool | str = False) -> nn.Module:
        """A `SiameseModel`: the backbone's body, shared, and `create_head(2 * C, 2)`."""
        from torso.models.siamese import create_siamese_model

        num_outputs = int(config.get("num_outputs", 2))
        if num_outputs != 2:
            raise TorsoError(
                f"a Siamese model has 2 outputs (different, same), not num_outputs={num_outputs}"
            )
        return create_siamese_model(
            config["backbone"],
            pretrained=pretrained,
            in_channels=int(config.get("in_channels", 3)),
            **self.head_options(config),
        )

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
        return {
            "accuracy": MulticlassAccuracy(2, average="micro"),
            "error_rate": 1 - MulticlassAccuracy(2, average="micro"),
        }

    def activation(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.float().softmax(dim=1)

    def decode(self, activations: torch.Tensor) -> torch.Tensor:
        """1 where the pair is judged the same, 0 where different: int64 `(N,)`."""
        return activations.argmax(dim=1)

    def describe(
        self, activations: torch.Tensor, classes: list[str] | None
    ) -> list[dict[str, Any]]:
        """`{"prediction": "same" | "different", "probability": p, "same_probability": q}`;
        `p` is the probability of the prediction, `q` that of "same"."""
        names = classes or list(PAIR_CLASSES)
        records = []
        for row in activations:
            index = int(row.argmax())
            records.append(
                {
                    "prediction": names[index],
                    "probability": round(float(row[index]), 6),
                    "same_probability": round(float(row[1]), 6),
                }
            )
        return records


@torch.no_grad()
def predict_pair(
    model: nn.Module,
    config: dict[str, Any],
    path_a: str | os.PathLike,
    path_b: str | os.PathLike,
) -> tuple[bool, float]:
    """Whether two image files show the same thing, and the probability of that verdict.

    model: a Siamese model (`torso.train.checkpoint.load_model` of a run trained with task siamese);
    config: its `torso.json` (gives `size`, `in_channels`, `resize`). Both images are read as
    validation reads them. Returns `(same, probability)`: `(True, P(same))` or
    `(False, P(different))`. A file that cannot be read raises `TorsoError` naming it.
    """
    from torso.data import load_images

    if config.get("task") not in (None, SiameseTask.name):
        raise TorsoError(
            f"--pair needs a model trained with --task siamese; this one is {config['task']!r}"
        )
    size = config.get("size")
    if size is None:
        raise TorsoError("this model's torso.json has no image size")
    size = tuple(size) if isinstance(size, list) else size
    images = load_images(
        [path_a, path_b],
        size,
        int(config.get("in_channels", 3)),
        config.get("resize", "squish"),
    )
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        logits = model(images[:1].to(device), images[1:].to(device))
    finally:
        model.train(was_training)
    same_probability = float(logits.float().softmax(dim=1)[0, 1])
    same = same_probability >= 0.5
    return same, same_probability if same else 1.0 - same_probability
