"""The report's interpretation: per-class tables, most-confused pairs, top losses with their
class activation maps, the segmentation images of lowest Dice; checked against hand counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_explain import COLOURS, colour_model
from test_report import pixels
from torch import nn

from torso.config import RunConfig
from torso.plots import plot_top_losses, write_report
from torso.predictor import Predictor
from torso.tasks import get_task
from torso.tasks.classify import most_confused
from torso.tasks.segment import image_dice, lowest

RED, GREEN, BLUE = 0, 1, 2


def solid(*channels: int) -> torch.Tensor:
    """A 32x32 image lit in `channels` (full brightness)."""
    image = torch.zeros(3, 32, 32)
    image[list(channels)] = 1.0
    return image


def test_most_confused_lists_the_largest_mistakes_first():
    matrix = torch.tensor([[8, 1, 0], [2, 7, 1], [0, 0, 9]])
    assert most_confused(matrix, ["a", "b", "c"]) == [
        {"actual": "b", "predicted": "a", "images": 2, "share of actual": 0.2},
        {"actual": "a", "predicted": "b", "images": 1, "share of actual": 0.1111},
        {"actual": "b", "predicted": "c", "images": 1, "share of actual": 0.1},
    ]
    assert most_confused(torch.eye(3, dtype=torch.long) * 4, ["a", "b", "c"]) == []


def test_classify_report_has_the_per_class_table_pairs_and_top_losses_with_maps(tmp_path):
    # The colour model predicts the brightest channel: red, red, green, blue.
    images = torch.stack([solid(RED), solid(RED), solid(GREEN), solid(BLUE)])
    targets = torch.tensor([RED, GREEN, GREEN, BLUE])
    config = RunConfig("classify", "test_resnet", 3, 32, classes=COLOURS)
    task = get_task("classify")
    parts = task.report_parts(
        Predictor(colour_model(), task, config), [(images, targets)], tmp_path
    )

    assert [figure.name for figure in parts.figures] == ["confusion_matrix.png", "top_losses.png"]
    assert parts.tables["per class"] == [
        {"class": "red", "precision": 0.5, "recall": 1.0, "f1": 0.6667, "images": 1},
        {"class": "green", "precision": 1.0, "recall": 0.5, "f1": 0.6667, "images": 2},
        {"class": "blue", "precision": 1.0, "recall": 1.0, "f1": 1.0, "images": 1},
    ]
    assert parts.tables["most confused"] == [
        {"actual": "green", "predicted": "red", "images": 1, "share of actual": 0.5}
    ]
    # A model without .body and .head has no maps: the top losses are drawn without them.
    plain = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 3))
    bare = task.report_parts(Predictor(plain, task, config), [(images, targets)], tmp_path / "b")
    assert [figure.name for figure in bare.figures] == ["confusion_matrix.png", "top_losses.png"]


def test_top_losses_draw_each_map_over_its_image(tmp_path):
    images = torch.full((2, 3, 32, 32), 0.5)
    arguments = ([0, 1], [1, 1], [2.0, 1.0], [0.4, 0.9], ["a", "b"])
    plain = pixels(plot_top_losses(images, *arguments, tmp_path / "plain.png"))
    maps = torch.zeros(2, 32, 32)
    maps[:, :16] = 1.0  # hot top half
    heated = pixels(plot_top_losses(images, *arguments, tmp_path / "heat.png", maps=maps))
    assert heated.shape == plain.shape
    grey = (np.abs(plain.astype(int) - 128) <= 2).all(axis=2)  # the images in the plain figure
    assert grey.sum() > 2 * 32 * 32
    # Half the grey pixels turn red-ish (hot), the other half blue-ish (cold).
    hot = grey & (heated[..., 0] > heated[..., 2] + 50)
    cold = grey & (heated[..., 2] > heated[..., 0] + 50)
    assert abs(hot.sum() - cold.sum()) < 0.1 * grey.sum() and hot.sum() > 0.4 * grey.sum()
    with pytest.raises(Exception, match=r"maps must have shape \(N, H, W\)"):
        plot_top_losses(images, *arguments, tmp_path / "x.png", maps=torch.zeros(2, 16, 16))


def test_multilabel_report_has_a_per_label_table(tmp_path):
    model = colour_model()
    with torch.no_grad():
        model.head[2].bias.fill_(-0.5)  # a present colour: p 0.62, an absent one: p 0.38
    images = torch.stack([solid(RED), solid(RED, GREEN), solid(BLUE)])
    truth = torch.tensor([[1, 0, 0], [1, 0, 0], [0, 1, 1]], dtype=torch.float32)
    config = RunConfig("multilabel", "test_resnet", 3, 32, classes=COLOURS)
    task = get_task("multilabel")
    parts = task.report_parts(Predictor(model, task, config), [(images, truth)], tmp_path)
    assert parts.tables["per label"] == [
        {"class": "red", "precision": 1.0, "recall": 1.0, "f1": 1.0, "images": 2},
        {"class": "green", "precision": 0.0, "recall": 0.0, "f1": 0.0, "images": 1},
        {"class": "blue", "precision": 1.0, "recall": 1.0, "f1": 1.0, "images": 1},
    ]


def test_image_dice_by_hand():
    truth = torch.zeros(3, 4, 4, dtype=torch.long)
    truth[0, :2] = 1  # 8 pixels of class 1
    predicted = torch.zeros(3, 4, 4, dtype=torch.long)
    predicted[0, :1] = 1  # 4 of them found
    truth[1] = 255  # all void: nothing to judge
    truth[2, 0, 0] = 255  # one void pixel, predicted as class 1, is left out
    predicted[2, 0, 0] = 1
    dice = image_dice(predicted, truth, 2, 255)
    # image 0: class 0: 2*8/(12+8) = 0.8, class 1: 2*4/(4+8) = 2/3
    assert dice.tolist() == pytest.approx([(0.8 + 2 / 3) / 2, 1.0, 1.0])


def test_lowest_keeps_the_lowest_scores_across_batches():
    kept = lowest(None, (torch.tensor([10, 11, 12]), torch.tensor([0.5, 0.1, 0.9])), 2)
    kept = lowest(kept, (torch.tensor([13, 14]), torch.tensor([0.3, 0.05])), 2)
    assert kept[0].tolist() == [14, 11] and kept[1].tolist() == pytest.approx([0.05, 0.1])


def test_segment_report_adds_the_images_of_lowest_dice(tmp_path):
    task = get_task("segment")
    config = RunConfig("segment", "test_resnet", 3, 32, classes=["bg", "a", "b"])
    torch.manual_seed(0)
    predictor = Predictor(task.build_model(config), task, config)
    batches = [(torch.rand(4, 3, 32, 32), torch.randint(0, 3, (4, 32, 32))) for _ in range(3)]
    figures = task.report_figures(predictor, batches, tmp_path)
    assert [figure.name for figure in figures] == ["segmentation.png", "worst_dice.png"]
    assert pixels(figures[1]).shape == pixels(figures[0]).shape  # six rows each


def test_the_report_shows_the_tasks_tables(tmp_path):
    rows = [{"class": "<cat>", "f1": 0.5, "images": 3}, {"class": "dog", "f1": 1.0, "images": 2}]
    page = write_report(tmp_path, title="t", tables={"per class": rows, "empty": []}).read_text()
    assert "<h2>Per class</h2>" in page and "<h2>Empty</h2>" not in page
    assert '<tr><td class="key">&lt;cat&gt;</td><td>0.5</td><td>3</td></tr>' in page


def test_a_regression_run_of_plain_loaders_gets_a_card_too(tmp_path):
    from torch.utils.data import DataLoader, TensorDataset

    import torso
    from torso.tools.report import write_run_report
    from torso.train.learner import Learner

    images = torch.rand(16, 3, 32, 32)
    values = images.mean(dim=(1, 2, 3)).unsqueeze(1)
    loader = DataLoader(TensorDataset(images, values), batch_size=8)
    learner = Learner(
        torso.create_model("test_resnet", 1), loader, loader, task=get_task("regress")
    )
    learner.fit_one_cycle(1, 1e-3)
    write_run_report(learner, tmp_path, title="values")
    card = (tmp_path / "card.md").read_text()
    assert "This model predicts 1 number(s) for each 32x32 image." in card
    assert f"| valid_loss | {learner.history[-1]['valid_loss']:.4f} |" in card
    assert (
        "- training images: 16" in card and "- Validated only on the 16 validation images" in card
    )
    assert "### Per class" not in card and "Fewest training images" not in card
