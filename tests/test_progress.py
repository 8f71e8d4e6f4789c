"""What the console shows while training: one line an epoch, however many classes; the epoch
that trains only the head says so."""

from __future__ import annotations

import csv
import io

import torch
from torch.utils.data import DataLoader, TensorDataset

from torso.config import RunConfig
from torso.tasks import get_task
from torso.train.callbacks import CSVLog, Progress
from torso.train.callbacks.progress import format_row
from torso.train.learner import Learner, set_seed

CLASSES = [f"class{index}" for index in range(12)]


def segmentation_learner(tmp_path, callbacks):
    set_seed(0)
    images = torch.rand(8, 3, 32, 32)
    masks = torch.randint(0, len(CLASSES), (8, 32, 32))
    train = DataLoader(TensorDataset(images[:6], masks[:6]), batch_size=3)
    valid = DataLoader(TensorDataset(images[6:], masks[6:]), batch_size=2)
    task = get_task("segment", decoder_width=16)
    config = RunConfig(
        "segment", "test_resnet", len(CLASSES), 32, classes=CLASSES, task_options=task.options
    )
    model = task.build_model(config)
    return Learner(model, train, valid, task=task, config=config, callbacks=callbacks, out=tmp_path)


def test_an_epoch_is_one_line_and_the_frozen_epoch_says_head_only(tmp_path):
    stream = io.StringIO()
    learner = segmentation_learner(tmp_path, [Progress(stream=stream), CSVLog()])
    learner.fine_tune(1, 1e-3, freeze_epochs=1)
    epochs = [line for line in stream.getvalue().splitlines() if line.startswith("epoch")]
    assert len(epochs) == 2
    assert epochs[0].startswith("epoch 1/2 (head only)  train_loss ")
    assert epochs[1].startswith("epoch 2/2  train_loss ")
    for line in epochs:
        assert "dice_foreground" in line and "mean_iou" in line
        assert "dice_class" not in line  # the 12 per-class columns stay in metrics.csv
    assert "12 per-class columns in metrics.csv" in stream.getvalue()
    with open(tmp_path / "metrics.csv") as file:
        columns = next(csv.reader(file))
    assert {f"dice_{name}" for name in CLASSES} <= set(columns)


def test_format_row_leaves_out_the_hidden_columns():
    row = {"epoch": 1, "train_loss": 0.5, "dice_a": 0.1, "lr": 1e-3, "time": 75.0}
    assert format_row(row, {"dice_a"}) == "train_loss 0.5000  lr 1.00e-03  time 1:15"


def test_torso_train_ends_with_the_main_metrics_only(tmp_path, capsys):
    from test_segment_task import write_shapes

    from torso.cli import main

    data = write_shapes(tmp_path / "shapes", 8, size=32)
    arguments = ["train", str(data), "--task", "segment", "--backbone", "test_resnet",
                 "--decoder-width", "16", "--size", "32", "--batch-size", "4", "--epochs", "1",
                 "--workers", "0", "--quiet", "--out", str(tmp_path / "run")]  # fmt: skip
    capsys.readouterr()
    assert main(arguments) == 0
    (last,) = [line for line in capsys.readouterr().out.splitlines() if "saved model" in line]
    assert "mean_iou" in last and "dice_foreground" in last
    assert "dice_circle" not in last and " lr " not in last
