"""What every task tells the Learner: how to build its model, its loss, its metrics, its decoding.

A task is a small object made by `torso.tasks.get_task(name, **options)`. Its `options` are plain
JSON values; they are saved in `torso.json` so that a checkpoint rebuilds the same task.
The Learner only ever calls the methods below, so a new task (segmentation, Siamese pairs) is one
new module with one class.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchmetrics import Metric


class Task:
    """The interface the Learner uses; subclasses fill in the loss, metrics and decoding.

    Class attributes:
        name: the task's name in the CLI and in `torso.json` (`"classify"`, ...).
        main_metric: the metric that early stopping and save-best watch.
        higher_is_better: the direction of `main_metric`.
    """

    name: str = ""
    main_metric: str = "valid_loss"
    higher_is_better: bool = False

    def __init__(self, **options: Any) -> None:
        self.options: dict[str, Any] = dict(options)

    def __repr__(self) -> str:
        options = ", ".join(f"{key}={value!r}" for key, value in self.options.items())
        return f"{type(self).__name__}({options})"

    # -- data --------------------------------------------------------------------------------
    def data_layout(self):
        """How this task's data is read and its targets encoded: a `torso.data.DataLayout`
        (reader, kind of targets, pairs or not, what its folders look like). `torso.data` asks
        only this, never the task's name."""
        raise NotImplementedError(f"{type(self).__name__} must define data_layout()")

    # -- the model ---------------------------------------------------------------------------
    def head_options(self, config: dict[str, Any]) -> dict[str, Any]:
        """Keyword arguments for the head, from the saved config (`config["head_options"]`)."""
        return dict(config.get("head_options") or {})

    def build_model(self, config: dict[str, Any], *, pretrained: bool | str = False) -> nn.Module:
        """The task's model, with `.body` and `.head`, from a `torso.json`-style config.

        `config` needs `backbone`, `num_outputs` and may give `in_channels` and `head_options`.
        `pretrained` is passed to `torso.models.create_model` (False when loading a checkpoint,
        whose weights replace the fresh ones).
        """
        from torso.models import create_model

        return create_model(
            config["backbone"],
            int(config["num_outputs"]),
            pretrained=pretrained,
            in_channels=int(config.get("in_channels", 3)),
            **self.head_options(config),
        )

    # -- training ----------------------------------------------------------------------------
    def loss(
        self, outputs: torch.Tensor, targets: torch.Tensor, reduction: str = "mean"
    ) -> torch.Tensor:
        """The training loss: a scalar for `reduction="mean"`, one value per sample (N,) for
        `reduction="none"` (used to find the top losses)."""
        raise NotImplementedError(f"{type(self).__name__} must define loss()")

    def metrics(self, config: dict[str, Any]) -> dict[str, Metric]:
        """Fresh torchmetrics objects, by name, for one pass over the validation set."""
        return {}

    def metric_inputs(
        self, outputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """What the metrics' `update` receives: by default `(activation(outputs), targets)`."""
        return self.activation(outputs), targets

    # -- predictions -------------------------------------------------------------------------
    def activation(self, outputs: torch.Tensor) -> torch.Tensor:
        """Raw model outputs → probabilities or values (softmax, sigmoid, identity).

        Test-time augmentation averages these.
        """
        return outputs

    def decode(self, activations: torch.Tensor) -> torch.Tensor:
        """Activations → the answer: class index (N,), label mask (N, K), values (N, T)."""
        return activations

    def describe(
        self, activations: torch.Tensor, classes: list[str] | None
    ) -> list[dict[str, Any]]:
        """One plain record per sample for people and CSV files, e.g.
        `{"prediction": "cat", "probability": 0.93}`."""
        raise NotImplementedError(f"{type(self).__name__} must define describe()")
