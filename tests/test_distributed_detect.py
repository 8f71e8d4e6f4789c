"""Detection under torchrun: 2 CPU processes with gloo measure a trained tiny detector on a
validation set of 7 images (4 + 3 per process: shares of different lengths, each image with
its own number of boxes) and get the mean average precision, the loss and `get_preds` of one
process measuring the whole set: the per-image targets and detections are gathered whole and
in the validation order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from box_builders import shapes, write_yolo
from distributed_detect_worker import as_json, measured_detector
from test_distributed import launch

from torso.cli import main

WORKER = Path(__file__).with_name("distributed_detect_worker.py")
VALID_IMAGES = 7  # 30 % of 24


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp_detect")
    data, run = root / "data", root / "run"
    write_yolo(data, shapes(24, seed=2))
    arguments = ["train", str(data), "--task", "detect", "--backbone", "test_resnet"]
    arguments += ["--size", "64", "--batch-size", "4", "--workers", "0", "--epochs", "8"]
    arguments += ["--lr", "1e-2", "--pyramid-channels", "64", "--no-augment", "--quiet"]
    assert main([*arguments, "--out", str(run)]) == 0
    return data, run


def test_two_processes_measure_a_detector_as_one(trained, tmp_path):
    data, run = trained
    results = tmp_path / "results"
    result, _ = launch(str(WORKER), str(data), str(run), str(results))
    assert result.returncode == 0, result.stderr[-3000:]

    torch.set_num_threads(1)
    metrics, predictions = measured_detector(str(data), str(run))
    single = as_json(predictions)
    assert len(single["targets"]) == VALID_IMAGES
    assert len({len(target["labels"]) for target in single["targets"]}) > 1  # 0, 1 and 2 boxes
    assert metrics["map_50"] > 0  # detections that match: every one of them counts
    for rank in (0, 1):
        found = json.loads((results / f"detect-{rank}.json").read_text())
        assert found["targets"] == single["targets"]
        activations = torch.tensor(found["activations"])
        torch.testing.assert_close(activations, torch.tensor(single["activations"]))
        assert found["metrics"].keys() == metrics.keys()
        for name, value in metrics.items():
            assert found["metrics"][name] == pytest.approx(value, abs=1e-6), name
