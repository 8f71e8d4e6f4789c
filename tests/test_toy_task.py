"""A new task is one module plus one registry entry: a toy task written here, registered with
`torso.registry.register_task`, trains, predicts and reports from the command line with no
other change to torso.

The toy task, "brightness": images sorted into folders named by a number (`0.2/`, `0.8/`); the
model regresses that number with an L1 (or MSE) loss; the metric is the mean absolute error;
prediction writes one row per image with the predicted brightness; the report gains a
histogram of the predictions.
"""

from __future__ import annotations

import csv
import json
import textwrap

import numpy as np
import pytest
from PIL import Image

from torso.cli import main
from torso.registry import TASKS, register_task

TOY_MODULE = '''
"""A toy task: regress the number that names an image's folder."""

from pathlib import Path

import torch
from torchmetrics import MeanAbsoluteError

from torso.tasks.base import Task, TaskOption


def read_folder_numbers(root, **options):
    import dataclasses

    from torso.data import read_classes

    source = read_classes(root, **options)
    values = [float(name) for name in source.classes]
    items = [dataclasses.replace(item, target=(values[item.target],)) for item in source.items]
    return dataclasses.replace(source, items=items, classes=None, target_names=["brightness"])


class BrightnessTask(Task):
    name = "brightness"
    main_metric = "mae"
    cli_options = (
        TaskOption("brightness_loss", str, "l1", "the loss (l1)", choices=("l1", "mse")),
    )

    def __init__(self, brightness_loss="l1"):
        super().__init__(brightness_loss=brightness_loss)

    def data_layout(self):
        from torso.data import DataLayout, NumberTargets

        return DataLayout(read=read_folder_numbers, targets=NumberTargets())

    def loss(self, outputs, targets, reduction="mean"):
        function = torch.nn.functional.l1_loss
        if self.options["brightness_loss"] == "mse":
            function = torch.nn.functional.mse_loss
        losses = function(outputs.float(), targets.float(), reduction="none").mean(dim=1)
        return losses.mean() if reduction == "mean" else losses

    def metrics(self, config):
        return {"mae": MeanAbsoluteError()}

    def describe(self, activations, classes):
        return [{"brightness": round(float(row[0]), 4)} for row in activations]

    def report_figures(self, predictor, loader, folder):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        values = predictor.get_preds(loader)["activations"][:, 0].numpy()
        figure, axes = plt.subplots(figsize=(4, 3))
        axes.hist(values, bins=10)
        axes.set_xlabel("predicted brightness")
        path = Path(folder) / "brightness.png"
        figure.savefig(path)
        plt.close(figure)
        return [path]
'''


def write_brightness_folders(root, per_folder=16):
    rng = np.random.default_rng(0)
    for value in ("0.2", "0.8"):
        folder = root / value
        folder.mkdir(parents=True)
        for index in range(per_folder):
            pixels = rng.normal(float(value) * 255, 20, (24, 24, 3)).clip(0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{index}.png")
    return root


@pytest.fixture
def brightness_task(tmp_path, monkeypatch):
    module = tmp_path / "modules" / "toy_brightness.py"
    module.parent.mkdir()
    module.write_text(textwrap.dedent(TOY_MODULE))  # one file ...
    monkeypatch.syspath_prepend(str(module.parent))
    monkeypatch.setitem(TASKS, "brightness", TASKS.get("brightness", ""))
    register_task("brightness", "toy_brightness:BrightnessTask")  # ... plus one registry entry
    return "brightness"


def test_a_toy_task_trains_predicts_and_reports_from_the_command_line(tmp_path, brightness_task):
    data = write_brightness_folders(tmp_path / "data")
    run = tmp_path / "run"
    tiny = ["--backbone", "test_resnet", "--size", "24", "--workers", "0", "--quiet"]
    train = ["train", str(data), "--task", brightness_task, "--brightness-loss", "mse", *tiny]
    assert main([*train, "--batch-size", "8", "--epochs", "2", "--out", str(run)]) == 0

    saved = json.loads((run / "torso.json").read_text())
    assert saved["task"] == "brightness"
    assert saved["task_options"] == {"brightness_loss": "mse"}  # its own CLI option, saved
    assert saved["num_outputs"] == 1
    with open(run / "metrics.csv") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 2 and float(rows[-1]["mae"]) >= 0  # its own metric, every epoch
    report = (run / "report.html").read_text()
    assert (run / "brightness.png").stat().st_size > 1000  # its own figure, in the report
    assert "<figcaption>brightness</figcaption>" in report
    assert "This model maps each 24x24 image to 1 outputs." in (run / "card.md").read_text()

    predictions = tmp_path / "predictions.csv"
    assert main(["predict", str(run), str(data / "0.8"), "--out", str(predictions)]) == 0
    with open(predictions) as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 16 and all(np.isfinite(float(row["brightness"])) for row in rows)


def test_an_option_of_the_toy_task_is_refused_for_another_task(tmp_path, brightness_task):
    data = write_brightness_folders(tmp_path / "data", per_folder=4)
    arguments = ["train", str(data), "--brightness-loss", "mse", "--out", str(tmp_path / "r")]
    assert main(arguments) == 2  # classify has no --brightness-loss
