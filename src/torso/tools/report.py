"""The report of a training run: the plots of a Learner's results, `report.html` and `card.md`.

Glue between the Learner (which has the history, the model and the validation loader) and
`torso.plots` (which draws plain data). Writes into the run folder: `losses.png` (the epochs
that trained the head only shaded, the best epoch marked), the task's own figures
(`Task.report_parts`: confusion matrix, top losses with their class activation maps, a
per-class precision / recall / F1 table and the most confused pairs for single-label
classification; F1 per label and against the threshold and a per-label table for multi-label;
predicted against true values for regression; same/different probabilities for Siamese pairs;
image | truth | prediction, and the images of lowest Dice, for segmentation) and `report.html`
with them and the tables, the run's settings (from `train_args.json` when
`torso train` wrote one, the data's counts, training time, date and device), the lr_find curve
when there is one, the model summary and the config.
"""

from __future__ import annotations

import copy
import io
import json
import os
from datetime import datetime
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

#: The arguments `torso train` saves in the run folder (`torso.cli.train.ARGS_FILE`).
TRAIN_ARGUMENTS = "train_args.json"

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
    command: str | None = None,
) -> Path:
    """Write the plots, `folder/report.html` and the model card `folder/card.md`
    (`torso.tools.card`) for `learner`'s run; returns the report's path.

    The task's figures and tables (`Task.report_parts`) measure the learner's model on its
    validation loader through a `torso.predictor.Predictor` (under torchrun a shared loader
    is gathered). `command`: the `torso train` command of the run, shown in both.
    """
    from torso.predictor import Predictor
    from torso.tasks.base import ReportParts
    from torso.tools.card import write_model_card

    folder = Path(folder)
    config = as_run_config(learner.config, where="the run's config")
    frozen, best = frozen_epochs(learner), best_epoch(learner)
    images: list[Path] = []
    if learner.history:
        images.append(
            report.plot_losses(
                learner.history, folder / "losses.png", frozen_epochs=frozen, best_epoch=best
            )
        )
    if lr_curve is not None:
        images.append(
            lr_curve.plot
            or report.plot_lr_find(
                lr_curve.lrs, lr_curve.losses, lr_curve.suggestion, folder / "lr_find.png"
            )
        )
    parts = ReportParts()
    if learner.valid_loader is not None:
        predictor = Predictor(learner.model, learner.task, config)
        parts = learner.task.report_parts(predictor, learner.valid_loader, folder)
    images.extend(parts.figures)
    final: dict[str, Any] = {
        k: v
        for k, v in (learner.history[-1] if learner.history else {}).items()
        if k not in ("epoch", "time")
    }
    settings = run_settings(learner, config, folder)
    if command:
        settings["command"] = command
    write_model_card(
        learner, folder, config, settings=settings, tables=parts.tables, best=best, command=command
    )
    return report.write_report(
        folder,
        title=title,
        summary_text=model_summary_text(learner.model, learner.task, config),
        metrics=final,
        history=learner.history,
        images=images,
        config=config.to_dict(),
        settings=settings,
        frozen_epochs=frozen,
        best_epoch=best,
        tables=parts.tables,
    )


def frozen_epochs(learner: Learner) -> list[int]:
    """The epochs (numbered from 1, as in the history) of the Learner's last training call
    whose phase kept the body frozen (`fine_tune`'s first)."""
    phases = getattr(learner, "phases", [])
    epoch = learner.total_epochs - sum(phase.epochs for phase in phases) + 1
    frozen = []
    for phase in phases:
        if phase.frozen_to > 0:
            frozen.extend(range(epoch, epoch + phase.epochs))
        epoch += phase.epochs
    return frozen


def best_epoch(learner: Learner) -> int | None:
    """The epoch whose weights `best/` holds (the `SaveBest` callback's), if one saved any."""
    from torso.train.callbacks import SaveBest

    for callback in learner.callbacks:
        if isinstance(callback, SaveBest) and callback.best_epoch is not None:
            return callback.best_epoch
    return None


def run_settings(learner: Learner, config: RunConfig, folder: Path) -> dict[str, Any]:
    """What the report's "Run" table shows: how the model was trained (from `folder /
    train_args.json` when `torso train` wrote it, and the Learner's phases), on what data,
    for how long, when and where."""
    from torso.train.callbacks.progress import format_seconds

    arguments = _train_arguments(folder)
    settings: dict[str, Any] = {"task": config.task, "backbone": config.backbone}
    if arguments.get("data"):
        settings["data"] = arguments["data"]
    if arguments.get("weights"):
        settings["pretrained"] = f"weights from {arguments['weights']}"
    elif "pretrained" in arguments:
        settings["pretrained"] = "yes" if arguments["pretrained"] else "no (random weights)"
    phases = []
    for phase in getattr(learner, "phases", []):
        if phase.frozen_to > 0:
            phases.append(f"{phase.epochs} epoch(s) head only at {phase.lrs[-1]:.2e}")
        elif min(phase.lrs) == max(phase.lrs):
            phases.append(f"{phase.epochs} epoch(s) at {phase.lrs[-1]:.2e}")
        else:
            rates = f"{phase.lrs[0]:.2e} (first group) to {phase.lrs[-1]:.2e} (head)"
            phases.append(f"{phase.epochs} epoch(s) all groups at {rates}")
    if phases:
        settings["learning rates (peak)"] = "; ".join(phases)
    if arguments.get("lr_find"):
        settings["learning rate chosen by"] = "lr_find"
    frozen = len(frozen_epochs(learner))
    epochs = len(learner.history)
    settings["epochs"] = f"{epochs} ({frozen} head only)" if frozen else epochs
    batch_size = arguments.get("batch_size", getattr(learner.train_loader, "batch_size", None))
    if batch_size is not None:
        settings["batch size"] = batch_size
    if "no_augment" in arguments:
        settings["augmentation"] = "off" if arguments["no_augment"] else "on"
    settings["image size"] = f"{config.size[0]}x{config.size[1]}, resize {config.resize}"
    settings["precision"] = {"no": "float32"}.get(learner.mixed_precision, learner.mixed_precision)
    settings["weight decay"] = learner.weight_decay
    if "seed" in arguments:
        settings["seed"] = arguments["seed"]
    unit = "pairs" if learner.task.images_per_sample == 2 else "images"
    for loader, name in ((learner.train_loader, "training"), (learner.valid_loader, "validation")):
        count = _length(getattr(loader, "dataset", None))
        if count is not None:
            settings[f"{name} {unit}"] = count
    names = config.class_names()
    shown = ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")
    settings["outputs"] = f"{config.num_outputs}: {shown}" if config.classes else config.num_outputs
    seconds = sum(float(row.get("time", 0.0)) for row in learner.history)
    settings["training time"] = format_seconds(seconds)
    settings["date"] = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    settings["device"] = _device_name(learner.device)
    return settings


def _train_arguments(folder: Path) -> dict[str, Any]:
    """`train_args.json` of the run folder as a dict; {} when missing or unreadable (the report
    then shows what the Learner knows)."""
    path = folder / TRAIN_ARGUMENTS
    try:
        arguments = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return arguments if isinstance(arguments, dict) else {}


def _length(dataset: Any) -> int | None:
    try:
        return len(dataset)
    except TypeError:
        return None


def _device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)
