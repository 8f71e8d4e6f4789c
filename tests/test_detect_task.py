"""The detection task: registry entry, loss, mean average precision, records, coordinates of
predictions, and `torso check --task detect`."""

from __future__ import annotations

import json

import pytest
import torch
from box_builders import shapes, write_coco
from torchvision import tv_tensors

from torso.cli import main
from torso.config import RunConfig
from torso.data.transforms import resize_square
from torso.registry import get_task, task_names
from torso.tasks.detect import DETECTIONS_PER_IMAGE, to_original


def config(**changes):
    fields = {
        "task": "detect",
        "backbone": "test_resnet",
        "num_outputs": 2,
        "classes": ["blue", "red"],
        "size": 64,
        "task_options": {"pyramid_channels": 64},
    }
    fields.update(changes)
    return RunConfig(**fields)


def truth():
    return [
        {
            "boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [40.0, 8.0, 60.0, 20.0]]),
            "labels": torch.tensor([0, 1]),
        },
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]


def test_registered():
    assert "detect" in task_names()
    task = get_task("detect", pyramid_channels=64)
    assert task.main_metric == "map" and task.higher_is_better


def test_loss_is_the_detectors_losses_summed():
    torch.manual_seed(0)
    task = get_task("detect", pyramid_channels=64)
    model = task.build_model(config()).train()
    outputs = model(torch.rand(2, 3, 64, 64))
    loss = task.loss(outputs, truth())
    parts = outputs.losses(truth())
    assert set(parts) == {"classification", "bbox_regression", "bbox_ctrness"}
    torch.testing.assert_close(loss, sum(parts.values()))
    assert task.loss(outputs, truth(), reduction="none").shape == (2,)
    loss.backward()


class Found:
    """A stand-in for the model's DetectionOutput: detections given by hand."""

    def __init__(self, detections):
        self.detections = detections
        self.anchors = [torch.zeros(1, 4)]


def run_metrics(task, detections, targets):
    metrics = task.metrics(config())
    predictions, truths = task.metric_inputs(Found(detections), targets)
    for metric in metrics.values():
        metric.update(predictions, truths)
    return {name: float(metric.compute()) for name, metric in metrics.items()}


def test_mean_average_precision():
    task = get_task("detect")
    perfect = [
        {"boxes": t["boxes"], "labels": t["labels"], "scores": torch.ones(len(t["labels"]))}
        for t in truth()
    ]
    values = run_metrics(task, perfect, truth())
    assert set(values) == {"map", "map_50", "map_75", "ap_blue", "ap_red"}
    assert all(value == pytest.approx(1.0) for value in values.values())
    # the red box predicted as blue: blue gets a false positive, red is missed
    wrong = [dict(perfect[0], labels=torch.tensor([0, 0])), perfect[1]]
    values = run_metrics(task, wrong, truth())
    assert values["ap_red"] == pytest.approx(0.0)
    assert values["map_50"] < 0.75
    # a box shifted by half its width: IoU 1/3, found at no threshold
    shifted = perfect[0]["boxes"].clone()
    shifted[0, [0, 2]] += 13
    values = run_metrics(task, [dict(perfect[0], boxes=shifted), perfect[1]], truth())
    assert values["ap_blue"] == pytest.approx(0.0) and values["ap_red"] == pytest.approx(1.0)


def test_activations_and_records():
    task = get_task("detect", score_threshold=0.5)
    found = Found(
        [
            {
                "boxes": torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]),
                "scores": torch.tensor([0.3, 0.9]),
                "labels": torch.tensor([0, 1]),
            },
            {
                "boxes": torch.zeros(0, 4),
                "scores": torch.zeros(0),
                "labels": torch.zeros(0, dtype=torch.int64),
            },
        ]
    )
    rows = task.activation(found)
    assert rows.shape == (2, DETECTIONS_PER_IMAGE, 6)
    assert rows[0, 0].tolist() == pytest.approx([5, 6, 7, 8, 0.9, 1])  # best first
    assert rows[1, :, 5].eq(-1).all()
    assert task.describe(rows, ["blue", "red"]) == [
        {"boxes": [[5.0, 6.0, 7.0, 8.0]], "labels": ["red"], "scores": [0.9]},
        {"boxes": [], "labels": [], "scores": []},
    ]


@pytest.mark.parametrize("resize", ["squish", "crop", "pad"])
@pytest.mark.parametrize(("height", "width"), [(48, 64), (90, 40)])
def test_boxes_map_back_to_the_original_image(resize, height, width):
    boxes = torch.tensor([[10.0, 12.0, 30.0, 35.0], [2.0, 20.0, 38.0, 40.0]])
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    moved = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width))
    _, moved = resize_square(image, 32, resize, moved)
    back = to_original(moved.as_subclass(torch.Tensor), height, width, 32, resize)
    if resize == "crop":  # what the crop cut away is lost: compare inside the kept part
        kept = to_original(torch.tensor([[0.0, 0.0, 32.0, 32.0]]), height, width, 32, resize)[0]
        boxes[:, 0::2] = boxes[:, 0::2].clamp(float(kept[0]), float(kept[2]))
        boxes[:, 1::2] = boxes[:, 1::2].clamp(float(kept[1]), float(kept[3]))
    torch.testing.assert_close(back, boxes, atol=1e-3, rtol=0)


def test_check_names_bad_annotations(tmp_path, capsys):
    path = write_coco(tmp_path, shapes(6))
    assert main(["check", str(tmp_path), "--task", "detect"]) == 0
    document = json.loads(path.read_text())
    document["annotations"].append(
        {"id": 99, "image_id": 3, "category_id": 7, "bbox": [1, 1, 5, 5], "iscrowd": 0}
    )
    path.write_text(json.dumps(document))
    capsys.readouterr()
    assert main(["check", str(tmp_path), "--task", "detect"]) == 1
    out = capsys.readouterr().out
    assert "instances.json: annotation 99 (image 'img002.png'): unknown category id 7" in out
