"""Single-label classification: one class per image, cross-entropy, accuracy."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torso.config import RunConfig
from torso.errors import TorsoError
from torso.numbers import fraction
from torso.tasks.base import ReportParts, Task, TaskOption, output_names

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torchmetrics import Metric

    from torso.predictor import Predictor

#: The images the report shows with the highest validation losses.
TOP_LOSSES = 9
#: The pairs of classes the report lists as most confused.
MOST_CONFUSED = 10
#: The per-class scores of the report's table (torchmetrics.classification's classes, with
#: `average="none"`; named, so that torchmetrics is imported only when a report is made).
CLASS_SCORES = {
    "precision": "MulticlassPrecision",
    "recall": "MulticlassRecall",
    "f1": "MulticlassF1Score",
}


LABEL_SMOOTHING = TaskOption(
    "label_smoothing", fraction, 0.0, "label smoothing of the cross-entropy (0)"
)


def class_probabilities(row: torch.Tensor, names: list[str]) -> dict[str, float]:
    """One sample's probability of each class as record fields: `{"p_cat": 0.93, ...}`."""
    return {f"p_{name}": round(float(p), 6) for name, p in zip(names, row, strict=True)}


def cross_entropy(
    outputs: torch.Tensor, targets: torch.Tensor, label_smoothing: float, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy of logits `(N, K)` against class indices `(N,)`; `(N,)` for
    `reduction="none"`. Shared by classification and Siamese pairs."""
    import torch.nn.functional as F

    return F.cross_entropy(
        outputs.float(), targets.long(), label_smoothing=label_smoothing, reduction=reduction
    )


def class_activation_maps(
    model: torch.nn.Module, images: torch.Tensor, classes: torch.Tensor | None
) -> torch.Tensor:
    """Grad-CAM maps `(N, H, W)` of the logit (before softmax or sigmoid) of class
    `classes[i]` of each image, or of its highest one when `classes` is None: the predicted
    class, the most probable label. Shared by classification and multi-label."""
    from torso.models.cam import grad_cam

    def scores(outputs: torch.Tensor) -> torch.Tensor:
        chosen = outputs.argmax(dim=1) if classes is None else classes.to(outputs.device)
        return outputs.gather(1, chosen.long().view(-1, 1))[:, 0]

    return grad_cam(model, images, scores)


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
    cli_options = (LABEL_SMOOTHING,)
    output_meaning = "class scores (logits) (N, K); softmax gives probabilities"
    output_activation = "softmax"
    serve_view = "classes"
    purpose = "classifies {size} images into one of {count} classes: {classes}"

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
        return cross_entropy(outputs, targets, self.options["label_smoothing"], reduction)

    def metrics(self, config: RunConfig) -> dict[str, Metric]:
        from torchmetrics.classification import MulticlassAccuracy

        num_classes, _ = output_names(config)
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
        """`{"prediction": "cat", "probability": 0.93, "p_cat": 0.93, "p_dog": 0.05, ...}`:
        the predicted class, its probability, then every class's (`p_<class>` columns)."""
        names = classes or [str(index) for index in range(activations.shape[1])]
        records = []
        for row in activations:
            index = int(row.argmax())
            record: dict[str, Any] = {
                "prediction": names[index],
                "probability": round(float(row[index]), 6),
            }
            record.update(class_probabilities(row, names))
            records.append(record)
        return records

    def activation_maps(
        self, model: torch.nn.Module, images: torch.Tensor, classes: torch.Tensor | None
    ) -> torch.Tensor:
        """Grad-CAM of each image's predicted class (or of `classes`)."""
        return class_activation_maps(model, images, classes)

    def folder_accuracy(
        self, records: Sequence[Mapping[str, Any]], folders: Sequence[str], config: RunConfig
    ) -> float | None:
        classes = set(config.class_names())
        if not records or not set(folders) <= classes:
            return None
        right = sum(
            record["prediction"] == folder for record, folder in zip(records, folders, strict=True)
        )
        return right / len(records)

    def report_parts(self, predictor: Predictor, loader: Any, folder: Path) -> ReportParts:
        """Over the validation set: the confusion matrix, the top losses with the class
        activation map of each one's predicted class, precision, recall and F1 per class, and
        the most confused pairs of classes."""
        import torchmetrics.classification

        from torso import plots

        predictions = predictor.get_preds(loader, with_loss=True)
        activations, targets = predictions["activations"], predictions["targets"]
        decoded = self.decode(activations)
        classes = predictor.config.class_names()
        matrix = plots.confusion_matrix(targets, decoded, activations.shape[1])
        figures = [plots.plot_confusion_matrix(matrix, classes, folder / "confusion_matrix.png")]
        count = min(TOP_LOSSES, len(targets))
        worst = predictions["losses"].topk(count).indices
        images = plots.images_at(loader, worst.tolist())
        if images is not None:
            figures.append(
                plots.plot_top_losses(
                    images,
                    targets[worst],
                    decoded[worst],
                    predictions["losses"][worst],
                    activations[worst],
                    classes,
                    folder / "top_losses.png",
                    maps=report_maps(predictor, images, decoded[worst]),
                )
            )
        scores = {
            name: getattr(torchmetrics.classification, metric)(len(classes), average="none")(
                decoded, targets.long()
            )
            for name, metric in CLASS_SCORES.items()
        }
        tables = {
            "per class": class_rows(classes, scores, matrix.sum(dim=1)),
            "most confused": most_confused(matrix, classes),
        }
        return ReportParts(figures=figures, tables=tables)

    def report_figures(self, predictor: Predictor, loader: Any, folder: Path) -> list[Path]:
        """`report_parts`'s figures."""
        return self.report_parts(predictor, loader, folder).figures


def report_maps(
    predictor: Predictor, images: torch.Tensor, classes: torch.Tensor
) -> torch.Tensor | None:
    """The class activation maps of `images` for `classes` drawn in the report, or None for a
    model that has none (one without `.body` and `.head`, given to the Learner)."""
    from torso.errors import NotExplainableError

    try:
        return predictor.explain(images, target=classes.tolist())
    except NotExplainableError:
        return None


def class_rows(
    names: Sequence[str], scores: Mapping[str, torch.Tensor], support: torch.Tensor
) -> list[dict[str, Any]]:
    """The report's per-class table: one row per class, its `scores` (name → `(K,)`) and the
    validation images that have it (`support`, `(K,)`)."""
    return [
        {
            "class": name,
            **{key: round(float(values[index]), 4) for key, values in scores.items()},
            "images": int(support[index]),
        }
        for index, name in enumerate(names)
    ]


def most_confused(matrix: torch.Tensor, names: Sequence[str]) -> list[dict[str, Any]]:
    """The `MOST_CONFUSED` largest counts off the diagonal of a confusion matrix `(K, K)` (row
    actual, column predicted), largest first: `{"actual", "predicted", "images", "share of
    actual"}`."""
    import torch

    off = matrix.clone()
    off.fill_diagonal_(0)
    totals = matrix.sum(dim=1)
    order = torch.argsort(off.flatten(), descending=True, stable=True)[:MOST_CONFUSED]
    rows = []
    for flat in order.tolist():
        actual, predicted = divmod(flat, len(names))
        count = int(off[actual, predicted])
        if count == 0:
            break
        rows.append(
            {
                "actual": names[actual],
                "predicted": names[predicted],
                "images": count,
                "share of actual": round(count / int(totals[actual]), 4),
            }
        )
    return rows
