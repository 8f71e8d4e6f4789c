"""The segmentation task: loss with void pixels, metrics by hand, and `torso train --task segment`
→ `torso predict` on generated shapes (a circle and a square on a noisy background)."""

from __future__ import annotations

import base64
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from torso.checkpoint import load_model, save_model
from torso.cli import main
from torso.config import RunConfig
from torso.errors import TorsoError
from torso.models.segmentation import DynamicUnet
from torso.tasks import get_task
from torso.tasks.segment import SegmentTask, soft_dice_loss

VOID = 255
CODES = ["background", "circle", "square"]


def write_shapes(root: Path, count: int, size: int = 40, seed: int = 0) -> Path:
    """`count` images with a red circle in the left half and a blue square in the right half at
    random heights and radii, their masks (0 background, 1 circle, 2 square) and codes.txt."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "codes.txt").write_text("\n".join(CODES) + "\n")
    half = size // 2
    for index in range(count):
        image = Image.fromarray(rng.integers(60, 120, (size, size, 3), dtype=np.uint8))
        mask = Image.new("L", (size, size), 0)
        draw, mask_draw = ImageDraw.Draw(image), ImageDraw.Draw(mask)
        for value, colour in ((1, (230, 60, 40)), (2, (40, 90, 230))):
            radius = int(rng.integers(size // 8, size // 5))
            x = int(rng.integers(radius, half - radius)) + (0 if value == 1 else half)
            y = int(rng.integers(radius, size - radius))
            box = (x - radius, y - radius, x + radius, y + radius)
            shape = "ellipse" if value == 1 else "rectangle"
            getattr(draw, shape)(box, fill=colour)
            getattr(mask_draw, shape)(box, fill=value)
        image.save(root / "images" / f"{index:03d}.png")
        mask.save(root / "masks" / f"{index:03d}.png")
    return root


# -- loss -------------------------------------------------------------------------------------
def test_loss_is_cross_entropy_over_non_void_pixels_only():
    task = get_task("segment")
    generator = torch.Generator().manual_seed(0)
    outputs = torch.randn(2, 3, 4, 5, generator=generator)
    targets = torch.randint(0, 3, (2, 4, 5), generator=generator)
    targets[0, :2] = VOID  # image 0: 10 void pixels of 20
    expected = F.cross_entropy(outputs, targets, ignore_index=VOID)
    assert torch.allclose(task.loss(outputs, targets), expected)

    # Scores at void pixels do not matter.
    changed = outputs.clone()
    changed[0, :, :2] = 100.0
    assert torch.allclose(task.loss(changed, targets), expected)

    # One value per image, each averaged over that image's own non-void pixels.
    per_image = task.loss(outputs, targets, reduction="none")
    assert per_image.shape == (2,)
    first = F.cross_entropy(outputs[:1, :, 2:], targets[:1, 2:])
    assert torch.allclose(per_image[0], first)
    assert torch.allclose(task.loss(outputs, targets, reduction="sum"), per_image.sum())


def test_an_all_void_batch_has_zero_loss_not_nan():
    task = get_task("segment", dice_weight=1.0)
    loss = task.loss(torch.randn(1, 2, 3, 3), torch.full((1, 3, 3), VOID))
    assert torch.isfinite(loss) and float(loss) == pytest.approx(0.0, abs=1e-6)


def test_dice_term_is_added_with_its_weight_and_vanishes_for_a_perfect_prediction():
    targets = torch.tensor([[[0, 0, 1, 1], [0, 2, 2, VOID]]])
    perfect = F.one_hot(targets.clamp(max=2), 3).permute(0, 3, 1, 2).float() * 50.0
    assert float(soft_dice_loss(perfect, targets, VOID, per_sample=False)) < 1e-6
    outputs = torch.randn(1, 3, 2, 4, generator=torch.Generator().manual_seed(1))
    plain = get_task("segment").loss(outputs, targets)
    weighted = get_task("segment", dice_weight=0.5).loss(outputs, targets)
    dice = soft_dice_loss(outputs, targets, VOID, per_sample=False)
    assert 0 < float(dice) < 1
    assert torch.allclose(weighted, plain + 0.5 * dice)


def test_bad_options_are_refused_in_the_users_words():
    with pytest.raises(TorsoError, match="dice_weight"):
        get_task("segment", dice_weight=-1)
    with pytest.raises(TorsoError, match="ignore_index"):
        get_task("segment", ignore_index=300)
    with pytest.raises(TorsoError, match="do not match"):
        get_task("segment").loss(torch.randn(1, 2, 4, 4), torch.zeros(1, 3, 3, dtype=torch.long))


# -- metrics ----------------------------------------------------------------------------------
def test_metrics_match_a_hand_count_and_ignore_void():
    # truth:      0 0 1 1 | 2 2 2 V      prediction: 0 1 1 1 | 2 2 0 0
    truth = torch.tensor([[[0, 0, 1, 1], [2, 2, 2, VOID]]])
    predicted = torch.tensor([[[0, 1, 1, 1], [2, 2, 0, 0]]])
    outputs = F.one_hot(predicted, 3).permute(0, 3, 1, 2).float()
    task = get_task("segment")
    config = {"num_outputs": 3, "classes": CODES}
    metrics = task.metrics(config)
    for metric in metrics.values():
        metric.update(*task.metric_inputs(outputs, truth))
    values = {name: float(metric.compute()) for name, metric in metrics.items()}
    # 7 non-void pixels, 5 right. Class 0: tp 1, fp 1, fn 1; class 1: tp 2, fp 1;
    # class 2: tp 2, fn 1.
    assert values["pixel_accuracy"] == pytest.approx(5 / 7)
    assert values["dice_background"] == pytest.approx(2 / 4)
    assert values["dice_circle"] == pytest.approx(4 / 5)
    assert values["dice_square"] == pytest.approx(4 / 5)
    assert values["dice"] == pytest.approx((0.5 + 0.8 + 0.8) / 3)
    assert values["mean_iou"] == pytest.approx((1 / 3 + 2 / 3 + 2 / 3) / 3)
    assert SegmentTask.main_metric == "mean_iou" and SegmentTask.higher_is_better


def test_dice_foreground_leaves_the_background_class_out():
    # The same pixels as above: circle 4/5 and square 4/5; the background's 2/4 left out.
    truth = torch.tensor([[[0, 0, 1, 1], [2, 2, 2, VOID]]])
    predicted = torch.tensor([[[0, 1, 1, 1], [2, 2, 0, 0]]])
    outputs = F.one_hot(predicted, 3).permute(0, 3, 1, 2).float()
    task = get_task("segment")
    metrics = task.metrics({"num_outputs": 3, "classes": CODES})
    half = task.metric_inputs(outputs[..., :2], truth[..., :2])  # updates add up
    metrics["dice_foreground"].update(*half)
    rest = task.metric_inputs(outputs[..., 2:], truth[..., 2:])
    metrics["dice_foreground"].update(*rest)
    assert float(metrics["dice_foreground"].compute()) == pytest.approx(0.8)
    # A class absent from truth and prediction does not count; no foreground at all gives 0.
    metrics = task.metrics({"num_outputs": 4, "classes": [*CODES, "x"]})
    metrics["dice_foreground"].update(*task.metric_inputs(outputs, truth))
    assert float(metrics["dice_foreground"].compute()) == pytest.approx(0.8)
    empty = task.metrics({"num_outputs": 3, "classes": CODES})["dice_foreground"]
    empty.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long))
    assert float(empty.compute()) == 0.0


def test_per_class_dice_columns_are_marked_and_a_clashing_name_gets_its_id():
    task = get_task("segment")
    config = {"num_outputs": 3, "classes": ["background", "foreground", "dice"]}
    assert task.per_class_metrics(config) == [
        "dice_background",
        "dice_foreground_1",
        "dice_dice",
    ]
    names = list(task.metrics(config))
    assert names[:4] == ["pixel_accuracy", "dice", "dice_foreground", "mean_iou"]
    assert set(task.per_class_metrics(config)) == set(names[4:])
    assert get_task("classify").per_class_metrics({"num_outputs": 3}) == []


def test_describe_gives_the_mask_its_classes_and_pixel_shares():
    task = get_task("segment")
    activations = F.one_hot(torch.tensor([[[0, 1], [1, 1]]]), 3).permute(0, 3, 1, 2).float()
    assert task.decode(activations).tolist() == [[[0, 1], [1, 1]]]
    (record,) = task.describe(activations, CODES)
    assert record["mask"].dtype == np.uint8 and record["mask"].tolist() == [[0, 1], [1, 1]]
    assert record["classes"] == CODES
    assert record["shares"] == {"background": 0.25, "circle": 0.75, "square": 0.0}


@pytest.mark.parametrize(
    "channels, cap",
    [([16, 24, 40, 112, 1280], 256), ([64, 128, 256, 512], 256), ([32, 48, 96], 64), ([8], 16)],
)
def test_the_automatic_decoder_cap_follows_the_bodys_last_width(channels, cap):
    from torso.tasks.segment import auto_decoder_width

    assert auto_decoder_width(channels) == cap


def test_segment_defaults_to_a_decoder_sized_by_the_body_and_full_keeps_fastais_widths():
    from torso.models.bodies import create_body

    config = RunConfig("segment", "test_resnet", 3, 32, classes=CODES)
    body = create_body("test_resnet")  # last width 96: a cap of 64

    def count(model):
        return sum(p.numel() for p in model.parameters())

    default = get_task("segment").build_model(config)
    assert count(default) == count(DynamicUnet(body, 3, decoder_width=64))
    fastai = count(DynamicUnet(body, 3))
    for full in ("full", "fastai", None):  # None: what runs saved before "auto" hold
        assert get_task("segment", decoder_width=full).options["decoder_width"] == "full"
        assert count(get_task("segment", decoder_width=full).build_model(config)) == fastai
    assert count(default) < fastai
    notes = get_task("segment").summary_notes(config, default)
    assert f"{fastai:,} parameters" in notes[0] and "--decoder-width full" in notes[0]


def test_decoder_width_on_the_command_line_takes_auto_full_or_a_number():
    import argparse

    from torso.tasks.segment import decoder_width_option

    assert [decoder_width_option(text) for text in ("auto", "FULL", "fastai", "128")] == [
        "auto",
        "full",
        "full",
        128,
    ]
    for bad in ("wide", "1"):
        with pytest.raises(argparse.ArgumentTypeError):
            decoder_width_option(bad)
    with pytest.raises(TorsoError, match="decoder_width"):
        get_task("segment", decoder_width="wide")


def test_the_model_is_a_dynamic_unet_rebuilt_from_its_saved_config(tmp_path):
    task = get_task("segment", decoder_width=32)
    config = RunConfig("segment", "test_resnet", 3, 32, classes=CODES, task_options=task.options)
    model = task.build_model(config)
    assert isinstance(model, DynamicUnet)
    assert model(torch.rand(1, 3, 32, 48)).shape == (1, 3, 32, 48)
    capped = sum(p.numel() for p in model.parameters())
    wide = get_task("segment").build_model(config)
    assert capped < sum(p.numel() for p in wide.parameters())
    save_model(model, config, tmp_path)
    loaded, saved = load_model(tmp_path)
    assert saved.task_options["decoder_width"] == 32
    assert sum(p.numel() for p in loaded.parameters()) == capped


@pytest.mark.parametrize("resize", ["squish", "pad", "crop"])
def test_a_predicted_mask_goes_back_to_the_images_own_size(resize):
    from torso.data.transforms import resize_square
    from torso.tasks.segment import _original_size_mask

    # A 40x80 image whose left half is class 1 and right half class 2, as the model sees it.
    truth = torch.ones(1, 40, 80, dtype=torch.uint8)
    truth[:, :, 40:] = 2
    seen = resize_square(torch.zeros(3, 40, 80), 32, resize, truth)[1][0]
    back = _original_size_mask(seen, 40, 80, resize, VOID)
    assert back.shape == (40, 80)
    if resize == "crop":  # the model never saw the outer quarters: void there
        assert (back[:, :18] == VOID).all() and (back[:, 62:] == VOID).all()
        assert (back[:, 22:38] == 1).all() and (back[:, 42:58] == 2).all()
    else:
        assert (back[:, :38] == 1).all() and (back[:, 42:] == 2).all()


# -- end to end -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory):
    """`torso train --task segment` on 60 generated 40-px images (48 train, 12 valid)."""
    root = tmp_path_factory.mktemp("segment")
    data = write_shapes(root / "shapes", 60)
    out = root / "run"
    # One thread: on a busy 2-core machine, two threads on a model this small wait on each other
    # (measured: 12 steps in 0.8 s with one thread, 7-22 s with two).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = main(
            [
                "train",
                str(data),
                "--task",
                "segment",
                "--backbone",
                "test_resnet",
                "--decoder-width",
                "32",
                "--size",
                "40",
                "--batch-size",
                "6",
                "--epochs",
                "3",
                "--lr",
                "1e-2",
                "--workers",
                "0",
                "--no-augment",
                "--out",
                str(out),
                "--quiet",
            ]
        )
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    return data, out


def test_shapes_reach_mean_iou_of_0_8(shapes_run):
    _, out = shapes_run
    with open(out / "metrics.csv") as file:
        rows = list(csv.DictReader(file))
    assert {"pixel_accuracy", "dice", "mean_iou", "dice_circle", "dice_square"} <= set(rows[0])
    assert float(rows[-1]["mean_iou"]) >= 0.8
    overlays = (out / "segmentation.png").read_bytes()
    assert base64.b64encode(overlays).decode() in (out / "report.html").read_text()
    assert json.loads((out / "torso.json").read_text())["classes"] == CODES
    assert (out / "worst_dice.png").is_file()  # the validation images of lowest Dice
    card = (out / "card.md").read_text()
    assert f"assigns each pixel of 40x40 images one of 3 classes: {', '.join(CODES)}" in card
    assert f"| mean_iou | {float(rows[-1]['mean_iou']):.4f} |" in card


def test_predict_writes_masks_at_each_images_size_overlays_and_shares(shapes_run, tmp_path):
    data, run = shapes_run
    # A wider copy of a training image: the mask must come back at 40x60 and still find shapes.
    source = Image.open(data / "images" / "000.png")
    wide = tmp_path / "inputs"
    wide.mkdir()
    source.resize((60, 40), Image.Resampling.BILINEAR).save(wide / "wide.png")
    source.save(wide / "plain.png")
    out = tmp_path / "predicted"
    assert main(["predict", str(run), str(wide), "--out", str(out)]) == 0
    mask = Image.open(out / "wide_mask.png")
    assert mask.mode == "P" and mask.size == (60, 40)
    assert Image.open(out / "wide_overlay.png").size == (60, 40)
    plain = np.asarray(Image.open(out / "plain_mask.png"))
    truth = np.asarray(Image.open(data / "masks" / "000.png"))
    assert (plain == truth).mean() > 0.9  # a training image: the model has learnt it
    with open(out / "predictions.csv") as file:
        rows = list(csv.DictReader(file))
    assert [Path(row["path"]).name for row in rows] == ["plain.png", "wide.png"]
    for row in rows:
        assert sum(float(row[name]) for name in CODES) == pytest.approx(1.0, abs=1e-5)
        assert float(row["circle"]) > 0.02 and float(row["square"]) > 0.02


def test_predictor_predict_gives_each_images_mask_at_its_own_size(shapes_run):
    import torso

    data, run = shapes_run
    source = Image.open(data / "images" / "000.png")
    wide = source.resize((60, 40), Image.Resampling.BILINEAR)
    records = torso.load(run).predict([data / "images" / "000.png", wide, np.asarray(wide)])
    truth = np.asarray(Image.open(data / "masks" / "000.png"))
    shapes = [record["mask"].shape for record in records]
    assert shapes == [(40, 40), (40, 60), (40, 60)]
    assert all(record["mask"].dtype == np.uint8 for record in records)
    assert (records[0]["mask"] == truth).mean() > 0.9  # a training image: the model has learnt it
    assert (records[1]["mask"] == records[2]["mask"]).all()
    assert records[0]["classes"] == CODES
    assert sum(records[0]["shares"].values()) == pytest.approx(1.0, abs=1e-5)


def test_predict_of_a_segmentation_run_needs_an_output_folder(shapes_run, capsys):
    data, run = shapes_run
    assert main(["predict", str(run), str(data / "images" / "001.png")]) == 2
    assert "--out" in capsys.readouterr().err


def test_a_saved_segment_config_holds_the_decoder_width_it_was_built_with():
    # "auto" is resolved from the body once, when the run starts: torso.json keeps the number,
    # so a saved run does not depend on how "auto" chooses in later versions.
    task = get_task("segment")
    config = RunConfig(task="segment", backbone="test_resnet", num_outputs=3, size=32)
    model = task.build_model(config)
    complete = task.complete_config(config, model)
    width = complete.head_options["decoder_width"]
    assert isinstance(width, int) and width == task.decoder_width(config, model.body.channels)
    assert complete.stats == model.body.stats
    rebuilt = get_task("segment", decoder_width="full").build_model(complete)
    assert sum(p.numel() for p in rebuilt.parameters()) == sum(
        p.numel() for p in model.parameters()
    )
