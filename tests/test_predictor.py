"""The Predictor and `prepare_images`: any image a user holds is prepared as validation prepares
it; `torso.load` gives a Predictor; `torso predict` recurses into folders and lets the task
write its output; tasks declare their command-line options."""

from __future__ import annotations

import argparse
import csv

import numpy as np
import pytest
import torch
from PIL import Image
from test_learner_shapes import write_shape_folder

import torso
from torso.checkpoint import save_model
from torso.cli import main
from torso.config import RunConfig
from torso.data.decode import read_image
from torso.data.prepare import prepare_images
from torso.data.transforms import resize_square
from torso.errors import TorsoError
from torso.predictor import Predictor
from torso.tasks import get_task

CLASSES = ["circle", "square", "triangle"]


def saved_run(folder, task_name="classify", num_outputs=3, classes=CLASSES, size=32, **options):
    task = get_task(task_name, **options)
    config = RunConfig(
        task_name, "test_resnet", num_outputs, size, classes=classes, task_options=task.options
    )
    torch.manual_seed(0)
    model = task.build_model(config).eval()
    save_model(model, config, folder)
    return folder


@pytest.fixture
def photo(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize("resize", ["squish", "crop", "pad"])
def test_prepare_images_gives_the_validation_pixels_for_every_kind_of_input(photo, resize):
    config = RunConfig("classify", "test_resnet", 3, 32, resize=resize)
    expected = resize_square(read_image(photo, 3), 32, resize)[0].float().div(255)
    pil = Image.open(photo)
    array = np.asarray(pil)
    tensor = torch.from_numpy(array.transpose(2, 0, 1).copy())
    for image in (photo, str(photo), pil, array, tensor):
        prepared = prepare_images(config, image)
        assert prepared.shape == (1, 3, 32, 32) and prepared.dtype == torch.float32
        torch.testing.assert_close(prepared[0], expected, rtol=0, atol=0)
    both = prepare_images(config, [photo, array])
    assert both.shape == (2, 3, 32, 32) and torch.equal(both[0], both[1])
    batch = prepare_images(config, expected[None].repeat(3, 1, 1, 1))
    assert batch.shape == (3, 3, 32, 32) and torch.equal(batch[2], expected)


def test_prepare_images_converts_channels_and_names_bad_input(photo, tmp_path):
    gray = RunConfig("classify", "test_resnet", 3, 16, in_channels=1)
    assert prepare_images(gray, photo).shape == (1, 1, 16, 16)
    assert prepare_images(gray, np.zeros((20, 20), np.uint8)).shape == (1, 1, 16, 16)
    with pytest.raises(TorsoError, match="missing.png"):
        prepare_images(gray, tmp_path / "missing.png")
    with pytest.raises(TorsoError, match="channels"):
        prepare_images(gray, torch.rand(3, 16, 16))
    with pytest.raises(TorsoError, match="uint8"):
        prepare_images(gray, np.zeros((20, 20), np.float64))
    with pytest.raises(TorsoError, match="no images"):
        prepare_images(gray, [])


def test_torso_load_returns_a_predictor_with_class_names(tmp_path, photo):
    predictor = torso.load(saved_run(tmp_path / "run"))
    assert isinstance(predictor, Predictor) and not hasattr(predictor, "optimizer")
    assert isinstance(predictor.config, RunConfig) and predictor.config.classes == tuple(CLASSES)
    records = predictor.predict([photo, Image.open(photo)])
    assert len(records) == 2 and records[0] == records[1]
    assert records[0]["prediction"] in CLASSES
    assert predictor.predict(photo, tta=True)[0]["prediction"] in CLASSES


def test_predictor_get_preds_and_tta_undo_the_flip_through_the_task(tmp_path):
    task = get_task("segment", decoder_width=16)
    config = RunConfig("segment", "test_resnet", 3, 32, task_options=task.options)
    torch.manual_seed(0)
    predictor = Predictor(task.build_model(config).eval(), task, config)
    images, masks = torch.rand(4, 3, 32, 32), torch.randint(0, 3, (4, 32, 32))
    loader = [(images[:2], masks[:2]), (images[2:], masks[2:])]
    preds = predictor.get_preds(loader, with_loss=True, with_inputs=True)
    assert preds["activations"].shape == (4, 3, 32, 32) and preds["losses"].shape == (4,)
    assert torch.equal(preds["inputs"], images)
    mirrored = predictor.get_preds([(images.flip(-1), masks)])["activations"].flip(-1)
    expected = (preds["activations"] + mirrored) / 2
    torch.testing.assert_close(predictor.tta(loader)["activations"], expected)
    with pytest.raises(TorsoError, match="loader"):
        predictor.get_preds()


def test_predict_recurses_into_subfolders(tmp_path, capsys):
    """`torso predict RUN valid/` with `valid/<class>/*.png` predicts every image and, as the
    folder names are the run's classes, prints the accuracy against them."""
    run = saved_run(tmp_path / "run")
    valid = write_shape_folder(tmp_path / "valid", per_class=2)
    out = tmp_path / "predictions.csv"
    assert main(["predict", str(run), str(valid), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 6 and {row["path"].split("/")[-2] for row in rows} == set(CLASSES)
    right = sum(row["prediction"] == row["path"].split("/")[-2] for row in rows)
    assert (
        f"accuracy {right / 6:.4f} against the folder names (6 images)" in capsys.readouterr().err
    )
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    assert main(["predict", str(run), str(tmp_path / "empty")]) == 2
    assert "contains no image files" in capsys.readouterr().err


def test_predict_of_a_pair_run_needs_two_images(tmp_path, photo, capsys):
    run = saved_run(tmp_path / "run", "siamese", 2, ["different", "same"])
    assert main(["predict", str(run), "--pair", str(photo), str(photo)]) == 0
    assert capsys.readouterr().out.startswith(("same (probability", "different (probability"))
    assert main(["predict", str(run), str(photo)]) == 2
    assert "--pair A B" in capsys.readouterr().err
    classify = saved_run(tmp_path / "classify")
    assert main(["predict", str(classify), "--pair", str(photo), str(photo)]) == 2
    assert "needs a Siamese run" in capsys.readouterr().err


def test_the_mask_overlay_is_one_function(tmp_path, photo):
    """`torso predict` of a segmentation run and the report's figure blend masks the same way."""
    from torso.plots import overlay, overlay_image, palette

    run = saved_run(tmp_path / "run", "segment", 3, ["a", "b", "c"], decoder_width=16)
    out = tmp_path / "masks"
    assert main(["predict", str(run), str(photo), "--out", str(out)]) == 0
    mask = np.asarray(Image.open(out / "photo_mask.png"))
    written = np.asarray(Image.open(out / "photo_overlay.png"))
    assert np.array_equal(written, np.asarray(overlay_image(Image.open(photo), mask, 3)))
    picture = np.asarray(Image.open(photo).convert("RGB"), dtype=np.float32) / 255
    blended = np.round(overlay(picture, mask, palette(3)) * 255).astype(np.uint8)
    assert np.array_equal(written, blended)
    with pytest.raises(ImportError):
        __import__("torso.cli.masks")


def test_task_options_come_from_the_tasks(capsys):
    from torso.cli.options import chosen_task_options
    from torso.cli.train import add_data_and_model_arguments

    parser = argparse.ArgumentParser()
    add_data_and_model_arguments(parser)
    text = parser.format_help()
    for heading in ("classify options", "multilabel options", "regress options", "segment options"):
        assert heading in text
    assert "--architecture" in text and "unet2015" in text
    # declared by classify and siamese, described once
    assert text.count("\n  --label-smoothing") == 1 and "classify, siamese:" in text
    args = parser.parse_args(["data", "--label-smoothing", "0.1"])
    assert chosen_task_options(args) == {"label_smoothing": 0.1}
    args = parser.parse_args(["data", "--label-smoothing", "0.1", "--dice-weight", "0.5"])
    with pytest.raises(TorsoError, match="--dice-weight is an option of --task segment"):
        chosen_task_options(args)  # another task's option is refused, not silently dropped
    args = parser.parse_args(["data", "--task", "regress", "--y-range", "0", "1"])
    assert chosen_task_options(args) == {"y_range": (0.0, 1.0)}
    args = parser.parse_args(["data", "--task", "segment", "--dice-weight", "0.5"])
    assert chosen_task_options(args) == {"dice_weight": 0.5}
    with pytest.raises(SystemExit):
        parser.parse_args(["data", "--architecture", "resnet"])
    assert "invalid choice" in capsys.readouterr().err
