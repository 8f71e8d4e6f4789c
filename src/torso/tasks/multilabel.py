"""Multi-label classification: any number of labels per image, one sigmoid per label."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from torso.config import RunConfig
from torso.errors import TorsoError
from torso.tasks.base import ReportParts, Task, TaskOption, output_names
from torso.tasks.classify import class_activation_maps, class_probabilities, class_rows

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torchmetrics import Metric

    from torso.predictor import Predictor


#: The per-label scores of the report's table (torchmetrics.classification's classes, with
#: `average="none"`; named, so that torchmetrics is imported only when a report is made).
LABEL_SCORES = {
    "precision": "MultilabelPrecision",
    "recall": "MultilabelRecall",
    "f1": "MultilabelF1Score",
}


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
    serve_view = "labels"
    purpose = (
        "gives each {size} image any number of {count} labels (those whose probability "
        "reaches the threshold): {classes}"
    )

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
        import torch.nn.functional as F

        losses = F.binary_cross_entropy_with_logits(
            outputs.float(), targets.float(), reduction="none"
        )
        if reduction == "none":
            return losses.mean(dim=1)
        return losses.mean() if reduction == "mean" else losses.sum()

    def metrics(self, config: RunConfig) -> dict[str, Metric]:
        from torchmetrics.classification import MultilabelAccuracy, MultilabelF1Score

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

    def activation_maps(
        self, model: torch.nn.Module, images: torch.Tensor, classes: torch.Tensor | None
    ) -> torch.Tensor:
        """Grad-CAM of each image's most probable label (or of `classes`)."""
        return class_activation_maps(model, images, classes)

    def report_parts(self, predictor: Predictor, loader: Any, folder: Path) -> ReportParts:
        """Over the validation set: each label's F1 at the run's threshold (`label_f1.png`),
        the micro F1 over all labels against the threshold (`threshold_f1.png`), and the
        precision, recall and F1 of each label at the threshold (a table)."""
        import torch
        import torchmetrics.classification

        from torso import plots

        predictions = predictor.get_preds(loader)
        probabilities = predictions["activations"].float()
        truth = predictions["targets"].float().round().bool()
        threshold = self.options["threshold"]
        names = predictor.config.class_names()
        per_label = f1_scores(probabilities >= threshold, truth, dim=0)
        thresholds = torch.linspace(0.05, 0.95, 19)
        micro = torch.stack([f1_scores(probabilities >= t, truth, dim=None) for t in thresholds])
        figures = [
            plots.plot_class_bars(
                per_label,
                names,
                folder / "label_f1.png",
                title=f"F1 per label at threshold {threshold:g}",
                label="F1",
            ),
            plots.plot_threshold_curve(
                thresholds, micro, threshold, folder / "threshold_f1.png", label="micro F1"
            ),
        ]
        scores = {
            name: getattr(torchmetrics.classification, metric)(
                len(names), threshold=threshold, average="none"
            )(probabilities, truth.long())
            for name, metric in LABEL_SCORES.items()
        }
        table = class_rows(names, scores, truth.sum(dim=0))
        return ReportParts(figures=figures, tables={"per label": table})

    def report_figures(self, predictor: Predictor, loader: Any, folder: Path) -> list[Path]:
        """`report_parts`'s figures."""
        return self.report_parts(predictor, loader, folder).figures


def f1_scores(predicted: torch.Tensor, truth: torch.Tensor, dim: int | None) -> torch.Tensor:
    """F1 of boolean predictions `(N, K)` against boolean truth `(N, K)`: per label over the
    samples (`dim=0`, NaN for a label neither predicted nor present), or over every entry
    together (micro, `dim=None`; 0 when nothing is predicted or present)."""
    import torch

    sum_ = (lambda t: t.sum(dim=dim)) if dim is not None else (lambda t: t.sum())
    overlap = sum_(predicted & truth).double()
    total = sum_(predicted).double() + sum_(truth).double()
    if dim is None:
        return 2 * overlap / total if total > 0 else torch.tensor(0.0, dtype=torch.double)
    return torch.where(total > 0, 2 * overlap / total.clamp(min=1), torch.nan)
