"""Regression: one or more numbers per image (a count, an age, keypoint coordinates)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from torso.config import RunConfig
from torso.errors import TorsoError
from torso.tasks.base import Task, TaskOption

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torchmetrics import Metric

    from torso.predictor import Predictor

#: The losses, by name: functions of `torch.nn.functional`.
LOSSES = {"mse": "mse_loss", "l1": "l1_loss"}


class RegressTask(Task):
    """Mean squared error (or L1); mean absolute error and root mean squared error.

    Targets are floats (N, T) (or (N,) for one target); outputs are (N, T).

    Options:
        loss: `"mse"` (default) or `"l1"`.
        y_range: `(low, high)`: the head ends in a scaled sigmoid so outputs stay in that range.
    """

    name = "regress"
    main_metric = "mae"
    higher_is_better = False
    cli_options = (
        TaskOption("loss", str, "mse", "loss (mse)", choices=tuple(LOSSES)),
        TaskOption(
            "y_range", float, None, "keep outputs in [LOW, HIGH]", nargs=2, metavar=("LOW", "HIGH")
        ),
    )
    output_meaning = "values (N, T)"
    serve_view = "values"
    purpose = "predicts {count} number(s) for each {size} image"

    def __init__(self, loss: str = "mse", y_range: tuple[float, float] | None = None) -> None:
        if loss not in LOSSES:
            raise TorsoError(f"regression loss must be one of {sorted(LOSSES)}, got {loss!r}")
        if y_range is not None:
            if len(y_range) != 2 or not float(y_range[0]) < float(y_range[1]):
                raise TorsoError(f"y_range must be (low, high) with low < high, got {y_range}")
            y_range = (float(y_range[0]), float(y_range[1]))
        super().__init__(loss=loss, y_range=list(y_range) if y_range else None)

    # -- data --------------------------------------------------------------------------------
    def data_layout(self):
        """A CSV (default `labels.csv`) whose columns after the file name are numbers; targets
        float32 `(T,)`."""
        from torso.data import DataLayout, NumberTargets, read_numbers

        return DataLayout(read=read_numbers, targets=NumberTargets())

    def head_options(self, config: RunConfig) -> dict[str, Any]:
        options = super().head_options(config)
        if self.options["y_range"] is not None:
            options.setdefault("y_range", tuple(self.options["y_range"]))
        return options

    def loss(
        self, outputs: torch.Tensor, targets: torch.Tensor, reduction: str = "mean"
    ) -> torch.Tensor:
        import torch.nn.functional as F

        outputs = outputs.float()
        targets = targets.float().reshape(outputs.shape)
        loss = getattr(F, LOSSES[self.options["loss"]])
        losses = loss(outputs, targets, reduction="none")
        if reduction == "none":
            return losses.reshape(len(losses), -1).mean(dim=1)
        return losses.mean() if reduction == "mean" else losses.sum()

    def metrics(self, config: RunConfig) -> dict[str, Metric]:
        from torchmetrics import MeanAbsoluteError, MeanSquaredError

        return {"mae": MeanAbsoluteError(), "rmse": MeanSquaredError(squared=False)}

    def metric_inputs(
        self, outputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = outputs.float()
        return outputs, targets.float().reshape(outputs.shape)

    def activation(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.float()

    @staticmethod
    def _value_names(count: int, classes: list[str] | None) -> list[str]:
        """The targets' names: the run's column names, else `value` or `value_0`, ..."""
        if classes and len(classes) == count:
            return list(classes)
        return ["value"] if count == 1 else [f"value_{i}" for i in range(count)]

    def describe(
        self, activations: torch.Tensor, classes: list[str] | None
    ) -> list[dict[str, Any]]:
        values = activations.reshape(len(activations), -1)
        names = self._value_names(values.shape[1], classes)
        return [
            {name: round(float(v), 6) for name, v in zip(names, row, strict=True)} for row in values
        ]

    def report_figures(self, predictor: Predictor, loader: Any, folder: Path) -> list[Path]:
        """Predicted against true values over the validation set, one panel per target
        (`predicted_vs_true.png`)."""
        from torso import plots

        predictions = predictor.get_preds(loader)
        predicted = predictions["activations"].float().reshape(len(predictions["activations"]), -1)
        actual = predictions["targets"].float().reshape(predicted.shape)
        names = self._value_names(predicted.shape[1], predictor.config.class_names())
        return [
            plots.plot_predicted_vs_true(actual, predicted, names, folder / "predicted_vs_true.png")
        ]
