"""The report of a training run: the plots of a Learner's results and `report.html`.

Glue between the Learner (which has the history, the model and the validation loader) and
`torso.plots` (which draws plain data). Writes into the run folder: `losses.png`, the
task's own figures (`Task.report_figures`: confusion matrix and top losses for single-label
classification, image | truth | prediction for segmentation, ...) and `report.html` with them,
the lr_find curve when there is one, the model summary and the config.
"""

from __future__ import annotations

import copy
import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from torso import plots as report
from torso.config import RunConfig, as_run_config
from torso.plots import confusion_matrix, images_at

if TYPE_CHECKING:
    from torso.tasks.base import Task
    from torso.train.learner import Learner
    from torso.train.lr_find import LRFindResult

__all__ = ["confusion_matrix", "images_at", "model_summary_text", "write_run_report"]


def model_summary_text(model: torch.nn.Module, task: Task, config: RunConfig) -> str:
    """`torso summary`'s tables for a body + head model built by `create_model`, as plain text
    ('' for a task whose model is a decoder or a pair model)."""
    from rich.console import Console

    from torso.models.bodies import Body
    from torso.tasks.base import Task
    from torso.tools.summary import render, summarize

    body = getattr(model, "body", None)
    if not isinstance(body, Body) or type(task).build_model is not Task.build_model:
        return ""
    if next(model.parameters()).device.type != "cpu":
        model = copy.deepcopy(model).cpu()
    buffer = io.StringIO()
    render(summarize(model, config.size), Console(file=buffer, width=110, color_system=None))
    return buffer.getvalue()


def write_run_report(
    learner: Learner,
    folder: str | os.PathLike,
    *,
    title: str,
    lr_curve: LRFindResult | None = None,
) -> Path:
    """Write the plots and `folder/report.html` for `learner`'s run; returns the report's path.

    The task's figures measure the learner's model on its validation loader through a
    `torso.predictor.Predictor` (under torchrun a shared loader is gathered).
    """
    from torso.predictor import Predictor

    folder = Path(folder)
    config = as_run_config(learner.config, where="the run's config")
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
    if learner.valid_loader is not None:
        predictor = Predictor(learner.model, learner.task, config)
        images.extend(learner.task.report_figures(predictor, learner.valid_loader, folder))
    final: dict[str, Any] = {
        k: v
        for k, v in (learner.history[-1] if learner.history else {}).items()
        if k not in ("epoch", "time")
    }
    return report.write_report(
        folder,
        title=title,
        summary_text=model_summary_text(learner.model, learner.task, config),
        metrics=final,
        history=learner.history,
        images=images,
        config=config.to_dict(),
    )
