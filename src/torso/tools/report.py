"""The report of a training run: the plots of a Learner's results and `report.html`.

Glue between the Learner (which has the history, the model and the validation predictions) and
`torso.tools.plots` (which draws plain data). Writes into the run folder: `losses.png`,
`confusion_matrix.png` and `top_losses.png` (single-label classification), `segmentation.png`
(image | truth | prediction, segmentation), and `report.html`
with them, the lr_find curve when there is one, the model summary and the config.
"""

from __future__ import annotations

import copy
import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from torso.tools import plots as report

if TYPE_CHECKING:
    from torso.train.learner import Learner
    from torso.train.lr_find import LRFindResult

TOP_LOSSES = 9
SEGMENTATION_SAMPLES = 6


def confusion_matrix(targets: torch.Tensor, predictions: torch.Tensor, num_classes: int):
    """`(K, K)` counts: row = actual class, column = predicted class."""
    index = targets.long() * num_classes + predictions.long()
    return torch.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def model_summary_text(learner: Learner) -> str:
    """`torso summary`'s tables for the learner's model, as plain text ('' if not applicable)."""
    from rich.console import Console

    from torso.models.bodies import Body
    from torso.tools.summary import render, summarize

    model = learner.model
    size = learner.config.get("size")
    if not isinstance(getattr(model, "body", None), Body) or size is None:
        return ""
    if learner.task.name not in (
        "classify",
        "multilabel",
        "regress",
    ):
        return ""
    if next(model.parameters()).device.type != "cpu":
        model = copy.deepcopy(model).cpu()
    buffer = io.StringIO()
    render(
        summarize(model, tuple(size) if isinstance(size, list) else size),
        Console(file=buffer, width=110, color_system=None),
    )
    return buffer.getvalue()


def images_at(loader, positions: list[int]) -> torch.Tensor | None:
    """The input images at `positions` (in loader order) of a loader yielding `(images, y)`,
    as `(len(positions), C, H, W)`; None if its inputs are not plain image batches."""
    wanted = {position: slot for slot, position in enumerate(positions)}
    found: list[torch.Tensor | None] = [None] * len(positions)
    offset = 0
    for x, _ in loader:
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            return None
        for row in range(len(x)):
            if offset + row in wanted:
                found[wanted[offset + row]] = x[row].float().cpu()
        offset += len(x)
        if all(image is not None for image in found):
            break
    if any(image is None for image in found):
        return None
    return torch.stack(found)


def classification_plots(learner: Learner, folder: Path) -> list[Path]:
    """Confusion matrix and top losses over the validation set (single-label only)."""
    predictions = learner.get_preds(with_loss=True)
    activations, targets = predictions["activations"], predictions["targets"]
    decoded = learner.task.decode(activations)
    num_classes = activations.shape[1]
    classes = learner.config.get("classes") or [str(index) for index in range(num_classes)]
    paths = [
        report.plot_confusion_matrix(
            confusion_matrix(targets, decoded, num_classes),
            classes,
            folder / "confusion_matrix.png",
        )
    ]
    count = min(TOP_LOSSES, len(targets))
    worst = predictions["losses"].topk(count).indices
    images = images_at(learner.valid_loader, worst.tolist())
    if images is not None:
        paths.append(
            report.plot_top_losses(
                images,
                targets[worst],
                decoded[worst],
                predictions["losses"][worst],
                activations[worst],
                classes,
                folder / "top_losses.png",
            )
        )
    return paths


def segmentation_plot(learner: Learner, folder: Path) -> Path | None:
    """Image | truth | prediction for the first `SEGMENTATION_SAMPLES` validation images."""
    images, truths, count = [], [], 0
    for x, y in learner.valid_loader:
        if not isinstance(x, torch.Tensor):
            return None
        images.append(x.cpu())
        truths.append(y.cpu())
        count += len(x)
        if count >= SEGMENTATION_SAMPLES:
            break
    if not images:
        return None
    batch = torch.cat(images)[:SEGMENTATION_SAMPLES]
    targets = torch.cat(truths)[:SEGMENTATION_SAMPLES]
    activations = learner.get_preds([(batch, targets)])["activations"]
    classes = learner.config.get("classes") or [str(i) for i in range(activations.shape[1])]
    return report.plot_segmentation(
        batch, targets, learner.task.decode(activations), classes, folder / "segmentation.png"
    )


def write_run_report(
    learner: Learner,
    folder: str | os.PathLike,
    *,
    title: str,
    lr_curve: LRFindResult | None = None,
) -> Path:
    """Write the plots and `folder/report.html` for `learner`'s run; returns the report's path."""
    folder = Path(folder)
    images: list[Path] = []
    if learner.history:
        images.append(report.plot_losses(learner.history, folder / "losses.png"))
    if lr_curve is not None:
        images.append(
            lr_curve.plot
            or report.plot_lr_find(
                lr_curve.lrs, lr_curve.losses, lr_curve.suggestion, folder / "lr_find.png"
            )
        )
    if learner.valid_loader is not None and learner.task.name == "classify":
        images.extend(classification_plots(learner, folder))
    if learner.valid_loader is not None and learner.task.name == "segment":
        overlays = segmentation_plot(learner, folder)
        if overlays is not None:
            images.append(overlays)
    final = {
        k: v
        for k, v in (learner.history[-1] if learner.history else {}).items()
        if k not in ("epoch", "time")
    }
    return report.write_report(
        folder,
        title=title,
        summary_text=model_summary_text(learner),
        metrics=final,
        history=learner.history,
        images=images,
        config=learner.config,
    )
