"""torso.plots: every plot is a PNG a person can open, and report.html stands alone."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from PIL import Image

from torso.errors import TorsoError
from torso.plots import (
    VOID,
    mask_to_image,
    palette,
    plot_confusion_matrix,
    plot_losses,
    plot_lr_find,
    plot_segmentation,
    plot_top_losses,
    write_report,
)

HISTORY = [
    {"epoch": epoch, "train_loss": 1 / (epoch + 1), "valid_loss": 1.2 / (epoch + 1),
     "accuracy": 1 - 0.4 / (epoch + 1), "time": 3.5}
    for epoch in range(4)
]  # fmt: skip


def pixels(path) -> np.ndarray:
    """The PNG at `path` as an (H, W, 3) uint8 array, after checking it is a valid PNG."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def count_near(picture: np.ndarray, colour, tolerance: int = 6) -> int:
    """How many pixels of `picture` are within `tolerance` of `colour` in every channel."""
    difference = np.abs(picture.astype(int) - np.asarray(colour, dtype=int))
    return int(np.all(difference <= tolerance, axis=2).sum())


# --- plots -------------------------------------------------------------------------------------


def test_plot_losses_draws_one_panel_for_losses_and_one_per_metric(tmp_path):
    both = plot_losses(HISTORY, tmp_path / "losses.png")
    losses_only = plot_losses(
        [{"train_loss": 0.9, "valid_loss": 1.0}, {"train_loss": 0.5, "valid_loss": None}],
        tmp_path / "only_losses.png",
    )
    assert both == tmp_path / "losses.png"
    wide, narrow = pixels(both), pixels(losses_only)
    # 2 panels (loss, accuracy) side by side at 460 px each; "time" and "epoch" get none.
    assert wide.shape[:2] == (340, 920)
    assert narrow.shape[:2] == (340, 460)
    assert count_near(wide, (31, 119, 180)) > 200  # the train curve, tab:blue
    assert count_near(wide, (255, 127, 14)) > 200  # the valid curve, tab:orange


def test_plot_lr_find_marks_the_suggestion(tmp_path):
    rates = np.logspace(-6, 0, 60)
    losses = 2.0 - 1.5 / (1 + np.exp(-2 * (np.log10(rates) + 3)))
    losses[-2:] = [np.inf, np.nan]  # a diverged end is left out, not an error
    marked = pixels(plot_lr_find(rates, losses, 1e-3, tmp_path / "lr_find.png"))
    plain = pixels(plot_lr_find(torch.tensor(rates), losses, None, tmp_path / "plain.png"))
    assert marked.shape[:2] == plain.shape[:2] == (420, 640)
    red = (214, 39, 40)  # tab:red, the suggestion's line and dot
    assert count_near(marked, red) > 200
    assert count_near(plain, red) == 0


def test_plot_confusion_matrix_shows_the_counts_and_grows_with_classes(tmp_path):
    names = ["cat", "dog", "bird"]
    matrix = np.array([[8, 1, 0], [2, 7, 1], [0, 0, 9]])
    first = pixels(plot_confusion_matrix(matrix, names, tmp_path / "a.png"))
    again = pixels(plot_confusion_matrix(matrix.copy(), names, tmp_path / "b.png"))
    changed = matrix.copy()
    changed[0, 2] = 5
    other = pixels(plot_confusion_matrix(torch.tensor(changed), names, tmp_path / "c.png"))
    assert first.shape == again.shape == other.shape
    assert np.array_equal(first, again)  # drawing is deterministic...
    assert not np.array_equal(first, other)  # ...so a different matrix is a different picture

    many = 40
    large = np.eye(many, dtype=int) * 50 + 1
    big = pixels(
        plot_confusion_matrix(large, [f"class {i}" for i in range(many)], tmp_path / "d.png")
    )
    assert big.shape[0] > 2.5 * first.shape[0]
    assert big.shape[1] > 2.5 * first.shape[1]


def test_plot_top_losses_orders_by_loss_and_handles_grey_images(tmp_path):
    colours = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0)]  # red, green, blue, yellow
    images = torch.tensor(colours, dtype=torch.float32)[:, :, None, None].expand(4, 3, 32, 32)
    losses = torch.tensor([0.1, 3.0, 1.0, 2.0])
    probabilities = torch.softmax(torch.randn(4, 3), dim=1)
    path = plot_top_losses(
        images, [0, 1, 2, 0], [1, 1, 0, 2], losses, probabilities, ["a", "b", "c"],
        tmp_path / "top_losses.png",
    )  # fmt: skip
    picture = pixels(path)
    height, width = picture.shape[:2]
    # a 2x2 grid, highest loss first: green, yellow / blue, red
    expected = {
        (0, 0): (0, 255, 0),
        (0, 1): (255, 255, 0),
        (1, 0): (0, 0, 255),
        (1, 1): (255, 0, 0),
    }
    for (row, column), colour in expected.items():
        centre = picture[int(height * (0.25 + 0.5 * row)) + 10, int(width * (0.25 + 0.5 * column))]
        assert tuple(centre) == colour, (row, column)

    grey = plot_top_losses(
        torch.rand(3, 1, 24, 40), [0, 1, 0], [1, 1, 0], [0.5, 0.2, 0.9], [0.6, 0.7, 0.8],
        ["a", "b"], tmp_path / "grey.png",
    )  # fmt: skip
    assert pixels(grey).shape[1] > pixels(grey).shape[0]  # wide images make a wide figure


def test_plot_segmentation_uses_the_palette_and_leaves_void_transparent(tmp_path):
    images = np.ones((2, 3, 32, 48), dtype=np.float32)  # white images: overlays show pure tints
    truths = np.zeros((2, 32, 48), dtype=np.int64)
    truths[:, 8:24, 8:24] = 1
    truths[1] = VOID  # the second truth has no labelled pixel at all
    predictions = torch.zeros(2, 1, 32, 48, dtype=torch.long)
    predictions[:, :, 8:24, 24:40] = 2
    names = ["background", "circle", "square"]
    picture = pixels(plot_segmentation(images, truths, predictions, names, tmp_path / "seg.png"))
    colours = palette(3).astype(float)
    tint = np.round(0.4 * 255 + 0.6 * colours)  # 60% colour over the white image's grey
    assert count_near(picture, tint[1]) > 16 * 16 * 4  # class 1 drawn larger than its pixels
    assert count_near(picture, tint[2]) > 16 * 16 * 2 * 4
    one_row = pixels(
        plot_segmentation(images[:1], truths[:1], predictions[:1], names, tmp_path / "one.png")
    )
    assert picture.shape[0] > 1.6 * one_row.shape[0]
    # A fully void truth panel shows the white image untouched, where background would tint it.
    labelled = truths.copy()
    labelled[1] = 0
    tinted = pixels(plot_segmentation(images, labelled, predictions, names, tmp_path / "bg.png"))
    assert tinted.shape == picture.shape
    white = (255, 255, 255)
    assert count_near(picture, white, 0) - count_near(tinted, white, 0) > 20_000  # ~a panel


# --- palette and mask PNGs ------------------------------------------------------------------------


def test_palette_is_fixed_distinct_and_starts_with_black():
    colours = palette(60)
    assert colours.shape == (60, 3) and colours.dtype == np.uint8
    assert tuple(colours[0]) == (0, 0, 0)
    assert len({tuple(colour) for colour in colours}) == 60
    assert np.array_equal(palette(5), colours[:5])  # a class keeps its colour for any K
    with pytest.raises(TorsoError, match="num_classes"):
        palette(0)


def test_mask_png_reads_back_as_the_same_mask(tmp_path):
    mask = np.zeros((10, 12), dtype=np.int64)
    mask[2:5, 3:9] = 2
    mask[0] = VOID
    path = tmp_path / "mask.png"
    mask_to_image(torch.from_numpy(mask)[None], num_classes=3).save(path)
    with Image.open(path) as image:
        assert image.mode == "P"
        assert image.info["transparency"] == VOID
        assert np.array_equal(np.asarray(image), mask)
        rgb = np.asarray(image.convert("RGB"))
    assert tuple(rgb[3, 4]) == tuple(palette(3)[2])
    assert tuple(rgb[0, 0]) == (0, 0, 0)
    with pytest.raises(TorsoError, match="class id 3"):
        mask_to_image(np.full((4, 4), 3), num_classes=3)


# --- report.html ------------------------------------------------------------------------------


class _Resources(HTMLParser):
    """Collects the tags and every src/href of a page."""

    def __init__(self):
        super().__init__()
        self.tags: set[str] = set()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.links += [value for name, value in attrs if name in ("src", "href", "srcset")]


def test_report_embeds_every_image_and_fetches_nothing(tmp_path):
    plots = [
        plot_losses(HISTORY, tmp_path / "plots" / "losses.png"),
        plot_confusion_matrix(
            np.eye(2) * 3, ["a", "b"], tmp_path / "plots" / "confusion_matrix.png"
        ),
    ]
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (16, 16), (200, 30, 30)).save(photo)
    path = write_report(
        tmp_path / "run",
        title="pets, resnet18",
        summary_text="Sequential(body, head)\n  body: 11,176,512 parameters",
        metrics={"accuracy": 0.9375, "valid_loss": torch.tensor(0.21)},
        history=HISTORY,
        images=[*plots, photo],
        config={"backbone": "resnet18", "lr": 2e-3, "size": (64, 64), "out": tmp_path},
    )
    assert path == tmp_path / "run" / "report.html"
    page = path.read_text(encoding="utf-8")
    for image, mime in ((plots[0], "png"), (plots[1], "png"), (photo, "jpeg")):
        encoded = base64.b64encode(image.read_bytes()).decode("ascii")
        assert f'src="data:image/{mime};base64,{encoded}"' in page
    resources = _Resources()
    resources.feed(page)
    assert len(resources.links) == 3
    assert all(link.startswith("data:") for link in resources.links)
    assert not resources.tags & {"script", "link", "iframe", "object", "embed"}
    assert not re.search(r"https?://", page)
    assert "url(" not in page and "@import" not in page
    for text in ("0.9375", "0.21", "11,176,512 parameters", "confusion matrix", "resnet18"):
        assert text in page
    # metrics: a header row and one row per metric; history: a header row and one row per epoch
    assert page.count("<tr>") == (1 + 2) + (1 + len(HISTORY))


def test_report_escapes_all_text(tmp_path):
    # "$...$" in a class name would be read as (here invalid) mathtext if not escaped
    evil = '<script>alert("x")</script>'
    plot = plot_confusion_matrix(
        np.eye(2), [evil, r"$\nocommand$ & y"], tmp_path / f"{evil[:8]}plot.png"
    )
    path = write_report(
        tmp_path,
        title=evil,
        summary_text=evil,
        metrics={evil: 1.0},
        history=[{"epoch": 0, evil: evil}],
        images=[plot],
        config={"classes": [evil]},
    )
    page = path.read_text(encoding="utf-8")
    assert "<script" not in page.lower()
    assert "&lt;script&gt;" in page


def test_report_with_only_a_title_is_a_valid_page(tmp_path):
    page = write_report(tmp_path, title="empty run").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<h2>" not in page


# --- bad input ------------------------------------------------------------------------------------

IMAGES = np.full((2, 3, 8, 8), 0.5, dtype=np.float32)
MASKS = np.zeros((2, 8, 8), dtype=np.int64)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda out: plot_losses([], out), "non-empty list"),
        (lambda out: plot_losses([{"epoch": 0, "note": "hi"}], out), "no numeric values"),
        (lambda out: plot_losses(HISTORY, out.with_suffix(".jpg")), r"must end in \.png"),
        (lambda out: plot_lr_find([1e-3, 1e-2], [1.0], 1e-3, out), "same length"),
        (lambda out: plot_lr_find([0.0, 1e-2], [1.0, 0.9], None, out), "positive"),
        (lambda out: plot_lr_find([1e-3, 1e-2], [1.0, 0.9], -1, out), "suggestion"),
        (lambda out: plot_confusion_matrix(np.eye(3), ["a", "b"], out), "3x3|2x2"),
        (lambda out: plot_confusion_matrix(-np.eye(2), ["a", "b"], out), "non-negative"),
        (
            lambda out: plot_top_losses(IMAGES, [0, 1], [1, 0], [1.0], [0.5, 0.5], ["a", "b"], out),
            "losses has 1 entries but there are 2 images",
        ),
        (
            lambda out: plot_top_losses(
                IMAGES, [0, 2], [1, 0], [1, 2], [0.5, 0.5], ["a", "b"], out
            ),
            "actual holds class id 2",
        ),
        (
            lambda out: plot_top_losses(
                IMAGES * 4, [0, 1], [1, 0], [1, 2], [1, 1], ["a", "b"], out
            ),
            r"values in \[0, 1\]",
        ),
        (
            lambda out: plot_segmentation(IMAGES, MASKS[:, :4], MASKS, ["a", "b"], out),
            "truths must have shape",
        ),
        (
            lambda out: plot_segmentation(IMAGES, MASKS + 7, MASKS, ["a", "b"], out),
            "truths holds class id 7",
        ),
        (lambda out: plot_segmentation(IMAGES[:, :2], MASKS, MASKS, ["a", "b"], out), "C = 1 or 3"),
        (lambda out: write_report(out.parent, title="t", images=[out]), "cannot read"),
        (lambda out: write_report(out.parent, title="t", images=str(out)), "list of image paths"),
    ],
)
def test_bad_input_gives_a_clear_error(tmp_path, call, message):
    with pytest.raises(TorsoError, match=message):
        call(tmp_path / "plot.png")
    assert not (tmp_path / "plot.png").exists()


def test_report_refuses_a_file_that_is_not_an_image(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    with pytest.raises(TorsoError, match="notes.png' is not a PNG, JPEG or GIF"):
        write_report(tmp_path, title="t", images=[text])


def test_writers_do_not_share_a_fixed_temporary_file(tmp_path, monkeypatch):
    """Plots, the report and `torso.json` are written through `torso.files.atomic_write`: each
    writer has its own temporary file, so one left behind (or another writer's) is no obstacle."""
    import os

    from torso.files import atomic_write

    for name in ("losses.png", "report.html"):
        (tmp_path / f".{name}.tmp").mkdir()  # what a fixed temporary name would collide with
    plot = plot_losses(HISTORY, tmp_path / "losses.png")
    page = write_report(tmp_path, title="run", images=[plot])
    assert plot.stat().st_size > 1000 and "<img" in page.read_text()
    names = {path.name for path in tmp_path.iterdir()}
    assert names == {"losses.png", "report.html", ".losses.png.tmp", ".report.html.tmp"}
    temporaries = []
    original = os.replace

    def record(source, target):
        temporaries.append(os.path.basename(source))
        original(source, target)

    monkeypatch.setattr(os, "replace", record)
    atomic_write(tmp_path / "a.txt", "one")
    atomic_write(tmp_path / "a.txt", "two")
    assert len(set(temporaries)) == 2 and (tmp_path / "a.txt").read_text() == "two"


# --- what a run's report tells -----------------------------------------------------------------


def test_loss_plot_shades_the_head_only_epochs_and_marks_the_best(tmp_path):
    plain = pixels(plot_losses(HISTORY, tmp_path / "plain.png"))
    marked = pixels(plot_losses(HISTORY, tmp_path / "marked.png", frozen_epochs=[0], best_epoch=2))
    shade = (236, 236, 236)  # tab:gray at alpha 0.15 on white
    assert count_near(marked, shade, 3) > count_near(plain, shade, 3) + 500
    green = (44, 160, 44)  # the dotted line at the best epoch
    assert count_near(marked, green, 20) > count_near(plain, green, 20) + 30


def test_report_shows_the_run_settings_and_marks_head_only_and_best_epochs(tmp_path):
    page = write_report(
        tmp_path,
        title="run",
        history=HISTORY,
        settings={"batch size": 16, "device": "cpu", "augmentation": "on"},
        frozen_epochs=[0],
        best_epoch=2,
    ).read_text(encoding="utf-8")
    assert "<h2>Run</h2>" in page
    assert '<td class="key">batch size</td><td>16</td>' in page
    assert '<th class="key">note</th>' in page
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", page.split("<h2>History</h2>")[1], re.DOTALL)
    assert rows[1].endswith('<td class="key">head only</td>')  # epoch 0
    assert rows[3].endswith('<td class="key">best</td>')  # epoch 2
    assert page.count('<tr class="best">') == 1


def test_task_figures_plots_draw_valid_pngs(tmp_path):
    from torso.plots import (
        plot_class_bars,
        plot_pair_histogram,
        plot_predicted_vs_true,
        plot_threshold_curve,
    )

    paths = [
        plot_class_bars([0.9, float("nan"), 0.4], ["a", "b", "c"], tmp_path / "f1.png",
                        title="F1 per label", label="F1"),
        plot_threshold_curve(np.linspace(0.1, 0.9, 9), np.linspace(0.2, 0.6, 9), 0.5,
                             tmp_path / "threshold.png"),
        plot_predicted_vs_true(np.arange(6.0), np.arange(6.0) + 0.5, ["age"],
                               tmp_path / "scatter.png"),
        plot_pair_histogram([0.9, 0.8, 0.1, 0.3], [1, 1, 0, 0], tmp_path / "pairs.png"),
    ]  # fmt: skip
    for path in paths:
        assert pixels(path).shape[0] > 100
    with pytest.raises(TorsoError, match="2 entries but there are 3 names"):
        plot_class_bars([0.1, 0.2], ["a", "b", "c"], tmp_path / "x.png", title="t", label="F1")
    with pytest.raises(TorsoError, match="3 probabilities but 2 pair labels"):
        plot_pair_histogram([0.1, 0.2, 0.3], [0, 1], tmp_path / "x.png")


def test_multilabel_f1_per_label_and_over_all_entries_by_hand():
    from torso.tasks.multilabel import f1_scores

    predicted = torch.tensor([[True, False, False], [True, True, False]])
    truth = torch.tensor([[True, True, False], [False, True, False]])
    per_label = f1_scores(predicted, truth, dim=0)
    # label 0: tp 1, fp 1 → 2/3; label 1: tp 1, fn 1 → 2/3; label 2: never there → NaN
    assert per_label[:2].tolist() == pytest.approx([2 / 3, 2 / 3])
    assert torch.isnan(per_label[2])
    assert float(f1_scores(predicted, truth, dim=None)) == pytest.approx(2 * 2 / (3 + 3))


@pytest.mark.parametrize(
    "task_name, outputs, files",
    [
        ("multilabel", 3, ["label_f1.png", "threshold_f1.png"]),
        ("regress", 1, ["predicted_vs_true.png"]),
        ("siamese", 2, ["pair_probabilities.png"]),
    ],
)
def test_each_task_adds_its_own_figures_to_the_report(tmp_path, task_name, outputs, files):
    from torch.utils.data import DataLoader, TensorDataset

    from torso.config import RunConfig
    from torso.predictor import Predictor
    from torso.tasks import get_task

    task = get_task(task_name)
    config = RunConfig(task_name, "test_resnet", outputs, 32)
    torch.manual_seed(0)
    images = torch.rand(8, 3, 32, 32)
    if task_name == "multilabel":
        targets = (torch.rand(8, 3) > 0.5).float()
    elif task_name == "regress":
        targets = torch.rand(8, 1) * 10
    else:
        targets = torch.tensor([0, 1] * 4)
    dataset = TensorDataset(images, torch.rand(8, 3, 32, 32), targets)
    batches = [((a, b) if task_name == "siamese" else a, y) for a, b, y in DataLoader(dataset, 4)]
    predictor = Predictor(task.build_model(config), task, config)
    figures = task.report_figures(predictor, batches, tmp_path)
    assert [figure.name for figure in figures] == files
    for figure in figures:
        assert pixels(figure).shape[0] > 100


def test_run_report_gives_settings_counts_time_date_device_and_epoch_marks(tmp_path):
    import json
    from datetime import date

    from test_learner_shapes import loaders, shapes

    from torso.config import RunConfig
    from torso.tasks import get_task
    from torso.tools.report import write_run_report
    from torso.train.callbacks import SaveBest
    from torso.train.learner import Learner, set_seed

    set_seed(0)
    train, valid = loaders(shapes, 24, 8, batch_size=8)
    task = get_task("classify")
    config = RunConfig("classify", "test_resnet", 3, 32, classes=["circle", "square", "triangle"])
    arguments = {"data": "shapes/", "pretrained": True, "batch_size": 8, "no_augment": False,
                 "epochs": 1, "freeze_epochs": 1, "lr": None, "lr_find": False}  # fmt: skip
    (tmp_path / "train_args.json").write_text(json.dumps(arguments))
    learner = Learner(
        task.build_model(config), train, valid, task=task, config=config,
        callbacks=[SaveBest()], out=tmp_path,
    )  # fmt: skip
    learner.fine_tune(1, 1e-3, freeze_epochs=1)
    page = write_run_report(learner, tmp_path, title="shapes").read_text(encoding="utf-8")
    run = page.split("<h2>Run</h2>")[1].split("</table>")[0]
    for setting, value in [
        ("pretrained", "yes"),
        ("batch size", "8"),
        ("augmentation", "on"),
        ("training images", "24"),
        ("validation images", "8"),
        ("outputs", "3: circle, square, triangle"),
        ("device", "cpu"),
    ]:
        assert f'<td class="key">{setting}</td><td>{value}</td>' in run, setting
    assert '<td class="key">epochs</td><td>2 (1 head only)</td>' in run
    assert "1 epoch(s) head only at 1.00e-03; 1 epoch(s) all groups at 5.00e-06" in run
    assert f'<td class="key">date</td><td>{date.today():%Y-%m-%d}' in run
    assert '<td class="key">training time</td><td>0:' in run
    history = page.split("<h2>History</h2>")[1].split("</table>")[0]
    assert '<td class="key">head only' in history
    assert page.count('<tr class="best">') == 1
