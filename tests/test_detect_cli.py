"""The proof of the box pipeline: a tiny detector trained from the command line finds coloured
rectangles, and `torso predict` writes COCO results that score what the run reported."""

from __future__ import annotations

import csv
import json
import math
import shutil

import numpy as np
import pytest
import torch
from box_builders import shapes, write_yolo
from PIL import Image
from torchmetrics.detection import MeanAveragePrecision

from torso.cli import main
from torso.data.boxes import read_boxes
from torso.data.sources import split_items
from torso.errors import TorsoError

#: What the run must reach on its validation images. Measured: 0.8 to 0.9 after 8 to 10 such
#: epochs; a box pipeline that loses the boxes' geometry (e.g. boxes not resized with their
#: image, or x and y swapped) stays far below.
MAP_50_AT_LEAST = 0.5


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny detector trained from the command line on blue rectangles: (data, run, the
    last row of its metrics.csv)."""
    root = tmp_path_factory.mktemp("detect")
    data, run = root / "shapes", root / "run"
    write_yolo(data, shapes(48, seed=1, classes=1))  # blue rectangles
    arguments = ["train", str(data), "--task", "detect", "--backbone", "test_resnet"]
    arguments += ["--size", "64", "--batch-size", "4", "--workers", "0", "--epochs", "8"]
    arguments += ["--lr", "1e-2", "--pyramid-channels", "64", "--no-augment", "--quiet"]
    assert main([*arguments, "--out", str(run)]) == 0
    with open(run / "metrics.csv") as file:
        last = list(csv.DictReader(file))[-1]
    return data, run, last


def test_train_detect_and_predict_coco_results(trained, tmp_path):
    data, run, last = trained
    assert float(last["map_50"]) >= MAP_50_AT_LEAST
    assert (run / "detections.png").is_file()
    card = (run / "card.md").read_text()
    assert "finds objects of 2 classes in 64x64 images, each as a box" in card
    assert f"| map_50 | {float(last['map_50']):.4f} |" in card

    # the validation images, as the run split them, predicted from their files
    source = read_boxes(data)
    _, valid = split_items(source.items, valid_pct=0.2, seed=0)
    folder = tmp_path / "valid"
    folder.mkdir()
    for item in valid:
        shutil.copy(item.path, folder / item.path.name)
    out = tmp_path / "preds.json"
    assert main(["predict", str(run), str(folder), "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results and set(results[0]) == {"file_name", "category_id", "category", "bbox", "score"}
    assert {r["category"] for r in results} <= {"blue", "red"}

    metric = MeanAveragePrecision(box_format="xywh")
    for item in valid:
        mine = [r for r in results if r["file_name"] == item.path.name]
        boxes = torch.tensor([list(b) for b in item.target.boxes]).reshape(-1, 4)
        boxes = boxes * torch.tensor([64, 48, 64, 48])  # YOLO's fractions of 64x48 images
        boxes[:, 2:] -= boxes[:, :2]
        metric.update(
            [
                {
                    "boxes": torch.tensor([r["bbox"] for r in mine]).reshape(-1, 4),
                    "scores": torch.tensor([r["score"] for r in mine]),
                    "labels": torch.tensor([r["category_id"] for r in mine], dtype=torch.int64),
                }
            ],
            [{"boxes": boxes, "labels": torch.tensor(item.target.labels, dtype=torch.int64)}],
        )
    found = metric.compute()
    # in the original images' pixels (64x48, not the 64x64 the model saw): the same boxes
    assert abs(float(found["map_50"]) - float(last["map_50"])) < 0.02
    assert abs(float(found["map"]) - float(last["map"])) < 0.02

    # --task-option score_threshold=... overrides the run's saved 0.05 for this prediction only
    assert min(r["score"] for r in results) < 0.3  # the saved threshold keeps low scores
    strict = tmp_path / "strict.json"
    command = ["predict", str(run), str(folder), "--out", str(strict), "--task-option"]
    assert main([*command, "score_threshold=0.3"]) == 0
    kept = json.loads(strict.read_text())
    assert kept == [r for r in results if r["score"] >= 0.3]
    assert json.loads((run / "torso.json").read_text())["task_options"]["score_threshold"] == 0.05
    assert main([*command, "score-threshold=1.5"]) == 2  # not a fraction
    assert main([*command, "detector=retinanet"]) == 2  # fixed by training


def test_prediction_option_of_another_task_is_refused():
    from torso.cli.predict import prediction_overrides
    from torso.tasks import get_task

    detect = get_task("detect")
    assert prediction_overrides(["score_threshold=0.3"], detect, "r") == {"score_threshold": 0.3}
    assert prediction_overrides(["--score-threshold=0.5"], detect, "r") == {"score_threshold": 0.5}
    assert prediction_overrides([], detect, "r") == {}
    with pytest.raises(TorsoError, match="a classify run such as 'runs/pets' takes NAME=VALUE"):
        prediction_overrides(["score_threshold=0.3"], get_task("classify"), "runs/pets")
    with pytest.raises(TorsoError, match="must be in"):
        prediction_overrides(["score_threshold=2"], detect, "r")
    with pytest.raises(TorsoError, match="NAME one of: score_threshold"):
        prediction_overrides(["score_threshold"], detect, "r")


def test_onnx_export_holds_the_postprocessing(trained, tmp_path):
    import onnxruntime

    from torso import load
    from torso.data.prepare import prepare_images

    _, run, _ = trained
    record = shapes(2, width=64, height=64, seed=7, classes=1)[1]  # the run's 64x64 size
    image = tmp_path / "check.png"
    record["image"].save(image)
    out = tmp_path / "detector.onnx"
    command = ["export", str(run), "--format", "onnx", "--out", str(out)]
    assert main([*command, "--check-image", str(image)]) == 0
    description = json.loads(out.with_suffix(".json").read_text())
    assert description["max_abs_diff"] <= 1e-4
    assert "NMS" in description["postprocessing"]
    assert main([*command, "--dynamic"]) == 2  # traced for one shape: refused, not miswritten

    predictor = load(run)
    pixels = prepare_images(predictor.config, [image])
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    exported = torch.from_numpy(session.run(None, {"images": pixels.numpy()})[0])
    expected = predictor.activations([image])
    assert exported.shape == expected.shape == (1, 100, 6)
    # the same confident boxes, best first: a rectangle of the image is found by both
    confident = expected[0][expected[0][:, 4] >= 0.3]
    assert len(confident) >= 1
    assert torch.allclose(exported[0][: len(confident)], confident, atol=1e-3)
    assert exported[0][len(confident) :, 4].max() < 0.3
    assert float(exported[0, -1, 5]) == -1  # padded with class -1


def test_export_difference_pairs_detections_by_class_and_box():
    from torso.tasks import get_task

    task = get_task("detect")
    rows = torch.zeros(1, 100, 6)
    rows[:, :, 5] = -1
    rows[0, 0] = torch.tensor([10.0, 10, 30, 30, 0.9, 0])
    rows[0, 1] = torch.tensor([40.0, 5, 60, 20, 0.9, 0])
    rows[0, 2] = torch.tensor([1.0, 1, 5, 5, 0.06, 0])  # below the compared score
    swapped = rows.clone()
    swapped[0, [0, 1]] = rows[0, [1, 0]]  # equal scores, other order
    assert task.export_difference(rows, swapped) == 0
    moved = rows.clone()
    moved[0, 0, 2] += 0.5
    assert task.export_difference(rows, moved) == pytest.approx(0.5)
    lost = rows.clone()
    lost[0, 1] = torch.tensor([0.0, 0, 0, 0, 0, -1])
    assert task.export_difference(rows, lost) == 30  # paired with the other box: far off
    relabelled = rows.clone()
    relabelled[0, 0, 5] = 1
    assert task.export_difference(rows, relabelled) == float("inf")
    without_faint = rows.clone()
    without_faint[0, 2] = torch.tensor([0.0, 0, 0, 0, 0, -1])
    assert task.export_difference(rows, without_faint) == 0


def test_predict_overlays_draw_the_boxes_on_each_image(trained, tmp_path):
    data, run, _ = trained
    folder = tmp_path / "images"
    folder.mkdir()
    for path in sorted((data / "images").rglob("*.png"))[:3]:
        shutil.copy(path, folder / path.name)
    out, overlays = tmp_path / "preds.json", tmp_path / "overlays"
    command = ["predict", str(run), str(folder), "--out", str(out), "--overlays", str(overlays)]
    assert main([*command, "--task-option", "score_threshold=0.3"]) == 0
    results = json.loads(out.read_text())
    drawn = sorted(overlays.glob("*_boxes.png"))
    assert [p.name for p in drawn] == sorted(f"{p.stem}_boxes.png" for p in folder.glob("*.png"))
    for picture in drawn:
        original = Image.open(folder / picture.name.replace("_boxes.png", ".png"))
        image = np.asarray(Image.open(picture).convert("RGB")).astype(int)
        assert image.shape[:2] == (original.height, original.width)  # the original's pixels
        mine = [r for r in results if r["file_name"] == original.filename.split("/")[-1]]
        for record in mine:  # each box's outline is drawn in red at its right edge
            x, y, w, h = record["bbox"]
            # PIL draws a line at a fractional coordinate on the pixel below or above it
            first = min(math.floor(x + w), original.width - 1)
            last = min(math.ceil(x + w), original.width - 1)
            middle = round(y + h / 2)
            edge = image[middle - 1 : middle + 2, first : last + 1]
            assert ((edge[..., 0] > 200) & (edge[..., 1] < 90)).any()
    assert sum(1 for r in results) > 0


def test_overlays_are_refused_by_a_task_that_draws_none(tmp_path):
    from torso.tasks import get_task

    with pytest.raises(TorsoError, match="--overlays: the classify task draws no overlays"):
        get_task("classify").predict_files(None, [], None, overlays=tmp_path)


def test_predictions_of_a_coco_run_carry_cocos_own_category_ids(tmp_path):
    """Trained on COCO annotations whose category ids are 7 (blue) and 3 (red), a run keeps
    those ids in torso.json and `torso predict` writes them, each with its own class name, so
    the results match the original annotations' categories. (A run trained on YOLO data writes
    class indices: `test_train_detect_and_predict_coco_results` scores them as such.)"""
    from box_builders import write_coco

    from torso import load

    data, run = tmp_path / "coco", tmp_path / "run"
    annotations = write_coco(data, shapes(12, seed=4), category_ids=(7, 3))
    arguments = ["train", str(data), "--task", "detect", "--backbone", "test_resnet"]
    arguments += ["--size", "64", "--batch-size", "4", "--workers", "0", "--epochs", "1"]
    arguments += ["--pyramid-channels", "64", "--no-augment", "--quiet", "--out", str(run)]
    assert main(arguments) == 0
    saved = json.loads((run / "torso.json").read_text())
    assert saved["classes"] == ["red", "blue"]  # COCO's categories in the order of their ids
    assert saved["task_options"]["category_ids"] == [3, 7]
    assert load(run).task.options["category_ids"] == [3, 7]

    out = tmp_path / "preds.json"
    images = data / "images"
    command = ["predict", str(run), str(images), "--out", str(out)]
    assert main([*command, "--task-option", "score_threshold=0"]) == 0
    results = json.loads(out.read_text())
    assert results  # an untrained detector's boxes: the model keeps those scoring over 0.05
    names = {c["id"]: c["name"] for c in json.loads(annotations.read_text())["categories"]}
    assert {r["category_id"] for r in results} <= {3, 7}
    for record in results:
        assert names[record["category_id"]] == record["category"]


def test_detection_category_ids_are_checked():
    from torso.tasks import get_task

    for wrong in ([1, 1], ["a", "b"], [1.5, 2], "12"):
        with pytest.raises(TorsoError, match="category_ids"):
            get_task("detect", category_ids=wrong)
    assert get_task("detect", category_ids=(3, 7)).options["category_ids"] == [3, 7]
