"""Predictor.explain: Grad-CAM maps of the class a model predicts, for any body."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_predictor import saved_run
from torch import nn

import torso
from torso.config import RunConfig
from torso.errors import NotExplainableError, TorsoError
from torso.models.model import BodyHeadModel
from torso.predictor import Predictor
from torso.tasks import get_task

COLOURS = ["red", "green", "blue"]


def colour_model() -> BodyHeadModel:
    """A model whose feature map is the image's colours pooled 4x4 (8x8 cells for 32x32) and
    whose head scores class k by the mean of channel k: a hand-checkable Grad-CAM."""
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 3))
    with torch.no_grad():
        head[2].weight.copy_(torch.eye(3))
        head[2].bias.zero_()
    return BodyHeadModel(nn.AvgPool2d(4), head)


def two_squares() -> torch.Tensor:
    """32x32 black with a red square top right and a dimmer green square bottom left."""
    image = torch.zeros(3, 32, 32)
    image[0, :8, 24:] = 1.0
    image[1, 24:, :8] = 0.5
    return image


@pytest.mark.parametrize("task_name", ["classify", "multilabel"])
def test_the_map_lies_where_the_explained_class_is(task_name):
    config = RunConfig(task_name, "test_resnet", 3, 32, classes=COLOURS)
    predictor = Predictor(colour_model(), get_task(task_name), config)
    predicted = predictor.explain(two_squares())  # red scores highest
    green = predictor.explain(two_squares(), target="green")
    blue = predictor.explain(two_squares(), target=2)

    assert predicted.shape == green.shape == (1, 32, 32)
    assert predicted.dtype == torch.float32
    # The red cells (rows 0-1, columns 6-7 of the 8x8 map) upsampled: 1 well inside them,
    # exactly 0 in the half of the image no red cell reaches through the interpolation.
    assert torch.allclose(predicted[0, :6, 26:], torch.tensor(1.0))
    assert predicted[0, 16:, :].max() == 0 and predicted[0, :, :16].max() == 0
    assert torch.allclose(green[0, 26:, :6], torch.tensor(1.0))
    assert green[0, :16, :].max() == 0 and green[0, :, 16:].max() == 0
    assert blue.abs().max() == 0  # nothing blue: an all-zero map stays zero


def test_explain_leaves_no_gradients_and_keeps_requires_grad(tmp_path):
    predictor = torso.load(saved_run(tmp_path / "run"))
    model = predictor.model
    for parameter in model.body.parameters():
        parameter.requires_grad_(False)
    before = [p.requires_grad for p in model.parameters()]
    model.train()
    maps = predictor.explain(torch.rand(5, 3, 40, 30), batch_size=2)

    assert maps.shape == (5, 32, 32) and maps.device.type == "cpu"
    assert maps.min() >= 0 and maps.max() <= 1
    assert all(float(peak) in (0.0, 1.0) for peak in maps.amax(dim=(1, 2)))
    assert all(p.grad is None for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == before
    assert not model.training


def test_target_by_name_equals_target_by_index_and_bad_targets_are_named(tmp_path):
    predictor = torso.load(saved_run(tmp_path / "run", size=64))
    images = torch.rand(2, 3, 64, 64)
    by_name = predictor.explain(images, target="square")
    assert torch.equal(by_name, predictor.explain(images, target=1))
    assert torch.equal(by_name, predictor.explain(images, target=["square", 1]))
    assert torch.equal(by_name, predictor.explain(images, target=torch.tensor([1, 1])))
    mixed = predictor.explain(images, target=["circle", "triangle"])
    assert torch.equal(mixed[0], predictor.explain(images[:1], target=0)[0])

    with pytest.raises(TorsoError, match="'hexagon' is not a class"):
        predictor.explain(images, target="hexagon")
    with pytest.raises(TorsoError, match="3 is not a class"):
        predictor.explain(images, target=3)
    with pytest.raises(TorsoError, match=r"one per image \(2\), not 3"):
        predictor.explain(images, target=[0, 1, 2])


def test_a_vision_transformer_body_gives_a_map_at_the_input_size():
    task = get_task("classify")
    config = RunConfig("classify", "test_vit", 3, 64, classes=COLOURS)
    torch.manual_seed(0)
    predictor = Predictor(task.build_model(config), task, config)
    assert predictor.model.body(torch.rand(1, 3, 64, 64)).shape[-2:] == (4, 4)

    maps = predictor.explain(torch.rand(3, 3, 64, 64))
    assert maps.shape == (3, 64, 64)
    assert maps.min() >= 0 and maps.max() == 1
    assert all(p.grad is None for p in predictor.model.parameters())


@pytest.mark.parametrize("task_name", ["regress", "segment"])
def test_tasks_without_class_scores_refuse_to_explain(tmp_path, task_name):
    predictor = torso.load(saved_run(tmp_path / "run", task_name, num_outputs=2, classes=None))
    with pytest.raises(NotExplainableError, match=f"a {task_name} model has no class activation"):
        predictor.explain(torch.rand(1, 3, 32, 32))


# --- torso interpret ---------------------------------------------------------------------------


@pytest.mark.parametrize("resize", ["pad", "crop", "squish"])
def test_interpret_draws_the_map_where_the_class_is_in_the_original_image(tmp_path, resize):
    from PIL import Image

    from torso.tools.interpret import INDEX, interpret_files

    # 64 wide, 32 tall: a red square top right of the centre, a dimmer green one bottom left of
    # it (both inside the centre square that resize="crop" keeps).
    pixels = np.zeros((32, 64, 3), np.uint8)
    pixels[:16, 36:48, 0] = 255
    pixels[16:, 16:28, 1] = 128
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    config = RunConfig("classify", "test_resnet", 3, 32, classes=COLOURS, resize=resize)
    predictor = Predictor(colour_model(), get_task("classify"), config)

    records = interpret_files(predictor, [tmp_path / "wide.png"], tmp_path / "out", alpha=1.0)
    with Image.open(tmp_path / "out" / "wide_cam.png") as drawn:
        heat = np.asarray(drawn.convert("RGB")).astype(int)
    assert heat.shape == (32, 64, 3)  # the image's own size
    # alpha 1: only the colour map (jet: blue at 0, red at 1); its hottest pixel lies in the
    # red square...
    row, column = np.unravel_index(np.argmax(heat[..., 0] - heat[..., 2]), heat.shape[:2])
    assert row < 16 and 36 <= column < 48
    assert heat[row, column, 0] >= 128 and heat[row, column, 2] == 0
    # ...dark blue (jet at 0) in the left half, where no red is
    assert np.abs(heat[:, :24] - [0, 0, 128]).max() <= 2
    assert records == [
        {
            "file": str(tmp_path / "wide.png"),
            "prediction": "red",
            "explained": "red",
            "probability": records[0]["probability"],
            "overlay": "wide_cam.png",
        }
    ]
    assert 1 / 3 < records[0]["probability"] < 1
    index = json.loads((tmp_path / "out" / INDEX).read_text())
    assert index == records


def test_heatmap_image_at_alpha_zero_is_the_image_and_refuses_a_wrong_size():
    from PIL import Image

    from torso.plots import heatmap_image

    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), np.uint8))
    same = heatmap_image(picture, np.ones((20, 30)), alpha=0.0)
    assert np.array_equal(np.asarray(same), np.asarray(picture))
    with pytest.raises(TorsoError, match="heat map is 20x30 but its image is 30x20"):
        heatmap_image(picture, np.ones((30, 20)))
