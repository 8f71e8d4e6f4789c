"""On a run trained from the command line: its model card and the report's interpretation;
`torso interpret`: a heat map over each image at its own size, an index, unreadable files
reported one line each, tasks without maps refused."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image
from test_cli_predict import assert_bad_files_reported, write_images
from test_learner_shapes import write_shape_folder
from test_predictor import saved_run

from torso.cli import main

TINY = ["--backbone", "test_resnet", "--size", "32", "--workers", "0", "--quiet"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A classification run trained for one epoch on generated shapes, and its data."""
    root = tmp_path_factory.mktemp("interpret")
    data = write_shape_folder(root / "shapes", per_class=8)
    run = root / "run"
    arguments = ["train", str(data), *TINY, "--batch-size", "8", "--epochs", "1", "--out", str(run)]
    assert main(arguments) == 0
    return run, data


def test_interpret_writes_an_overlay_per_image_and_an_index(trained, tmp_path, capsys):
    run, data = trained
    images = write_images(tmp_path / "photos" / "nested")  # two 60x40 images, three bad files
    shutil.copy(data / "circle" / "0.png", tmp_path / "photos" / "0.png")
    out = tmp_path / "cams"
    code = main(["interpret", str(run), str(tmp_path / "photos"), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert_bad_files_reported(captured.err)
    index = json.loads((out / "interpret.json").read_text())
    assert [record["overlay"] for record in index] == ["0_cam.png", "a_cam.png", "c_cam.png"]
    assert {record["file"] for record in index} == {
        str(tmp_path / "photos" / "0.png"), str(images / "a.png"), str(images / "c.png")
    }  # fmt: skip
    for record in index:
        assert record["prediction"] == record["explained"]
        assert record["prediction"] in ("circle", "square", "triangle")
        assert 1 / 3 <= record["probability"] <= 1
    with Image.open(out / "a_cam.png") as drawn, Image.open(images / "a.png") as original:
        assert drawn.size == original.size == (60, 40)
        difference = np.abs(np.asarray(drawn, int) - np.asarray(original.convert("RGB"), int))
    assert difference.mean() > 10  # the heat map is drawn over it
    assert "wrote 3 heat maps" in captured.out


def test_interpret_target_and_alpha(trained, tmp_path, capsys):
    run, data = trained
    image = data / "square" / "1.png"
    plain = tmp_path / "plain"
    assert main(["interpret", str(run), str(image), "--out", str(plain), "--alpha", "0"]) == 0
    with Image.open(plain / "1_cam.png") as drawn, Image.open(image) as original:
        assert np.array_equal(np.asarray(drawn), np.asarray(original.convert("RGB")))
    for target in ("triangle", "2"):
        out = tmp_path / target
        assert main(["interpret", str(run), str(image), "--out", str(out), "--target", target]) == 0
        record = json.loads((out / "interpret.json").read_text())[0]
        assert record["explained"] == "triangle"
    assert (tmp_path / "triangle" / "1_cam.png").read_bytes() == (
        tmp_path / "2" / "1_cam.png"
    ).read_bytes()
    capsys.readouterr()
    assert main(["interpret", str(run), str(image), "--out", str(out), "--target", "hexagon"]) == 2
    assert "--target 'hexagon' is not a class" in capsys.readouterr().err


@pytest.mark.parametrize("task_name", ["regress", "segment"])
def test_interpret_refuses_a_task_without_maps(tmp_path, capsys, task_name):
    run = saved_run(tmp_path / "run", task_name, num_outputs=2, classes=None)
    images = write_images(tmp_path / "photos", names=("a.png",))
    out = tmp_path / "cams"
    assert main(["interpret", str(run), str(images / "a.png"), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"a {task_name} model has no class activation map" in err and "Traceback" not in err
    assert not out.exists()


def test_the_run_has_a_model_card_generated_from_it(trained):
    run, data = trained
    card = (run / "card.md").read_text(encoding="utf-8")
    final = list(csv.DictReader((run / "metrics.csv").open()))[-1]
    assert f"| accuracy | {float(final['accuracy']):.4f} |" in card
    assert f"| valid_loss | {float(final['valid_loss']):.4f} |" in card
    assert "classifies 32x32 images into one of 3 classes: circle, square, triangle" in card
    assert "### Per class" in card and "| class | precision | recall | f1 | images |" in card
    # The data table: each class's 8 images, split between training and validation.
    for name in ("circle", "square", "triangle"):
        (row,) = [line for line in card.splitlines() if line.startswith(f"| {name} | ")][:1]
        training, validation = (int(cell) for cell in row.strip("| ").split(" | ")[1:3])
        assert training + validation == 8 and training > validation
    assert f'predictor = torso.load("{run}")' in card
    assert f"torso predict {run} photos/" in card
    assert f"torso train {data} --backbone test_resnet --size 32 --batch-size 8" in card
    assert "- Validated only on the " in card and "Fewest training images" in card


def test_the_report_shows_the_per_class_table_and_top_losses_with_maps(trained):
    run, _ = trained
    page = (run / "report.html").read_text(encoding="utf-8")
    assert "<h2>Per class</h2>" in page
    assert "<th>precision</th><th>recall</th><th>f1</th><th>images</th>" in page
    assert (run / "top_losses.png").is_file() and "figcaption>top losses<" in page
