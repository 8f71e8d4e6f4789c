"""`torso train`'s recipe options: the augmentation switches reach the training loader (and
`--no-flip` never mirrors an image), and a completed run keeps no optimiser state unless
`--keep-state` (so it cannot be resumed: one line says it is complete)."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from PIL import Image
from test_learner_shapes import write_shape_folder

from torso.cli import main
from torso.cli.train import DEFAULT_MAX_ROTATE, DEFAULT_MIN_SCALE, add_parser, load_training_data
from torso.data.transforms import Augmentation

TINY = ["--backbone", "test_resnet", "--size", "16", "--workers", "0", "--quiet"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_shape_folder(tmp_path_factory.mktemp("shapes"), per_class=6, size=16)


@pytest.fixture(scope="module")
def half_white(tmp_path_factory):
    """Two class folders of 32 px images whose left half is light and right half dark (each
    image a little different, so none looks like a duplicate)."""
    root = tmp_path_factory.mktemp("half")
    for kind, name in enumerate(("a", "b")):
        (root / name).mkdir()
        for number in range(4):
            pixels = np.full((32, 32, 3), 4 * number + 20 * kind, np.uint8)
            pixels[:, :16] = 255 - pixels[:, 16:]
            Image.fromarray(pixels).save(root / name / f"{number}.png")
    return root


def train_arguments(*options) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    return add_parser(parser.add_subparsers()).parse_args([str(option) for option in options])


def training_augmentation(data, *options):
    args = train_arguments(data, *TINY, *options)
    return load_training_data(args).train.dataset.augmentation


def test_the_options_default_to_the_augmentation_defaults():
    assert DEFAULT_MAX_ROTATE == Augmentation().max_rotate
    assert DEFAULT_MIN_SCALE == Augmentation().min_scale


@pytest.mark.parametrize(
    "options, expected",
    [
        ([], Augmentation()),
        (["--no-flip"], Augmentation(flip=False)),
        (["--max-rotate", "25"], Augmentation(max_rotate=25.0)),
        (["--max-rotate", "0"], Augmentation(max_rotate=0.0)),
        (["--min-scale", "1"], Augmentation(min_scale=1.0)),
        (["--min-scale", "0.5", "--no-flip"], Augmentation(min_scale=0.5, flip=False)),
    ],
)
def test_each_switch_reaches_the_training_loader(data, options, expected):
    assert training_augmentation(data, *options) == expected


def test_no_augment_wins_over_the_switches(data):
    assert training_augmentation(data, "--no-augment", "--no-flip") is None


@pytest.mark.parametrize("options", [["--min-scale", "0"], ["--min-scale", "1.5"]])
def test_a_min_scale_outside_0_1_is_one_line(data, options, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", str(data), *TINY, *options])
    assert exit_.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--min-scale" in error and "(0, 1]" in error


def mirrored(dataset, epochs=range(8)) -> list[bool]:
    """For each training image of each epoch: is its right half brighter than its left?"""
    flags = []
    for epoch in epochs:
        for index in range(len(dataset)):
            image, _ = dataset.image(index, epoch)
            half = image.shape[-1] // 2
            flags.append(bool(image[..., half:].float().mean() > image[..., :half].float().mean()))
    return flags


def test_no_flip_never_mirrors_a_training_image(half_white):
    flipping = load_training_data(train_arguments(half_white, *TINY)).train.dataset
    assert any(mirrored(flipping)), "the default flips some images (else this test shows nothing)"
    kept = load_training_data(train_arguments(half_white, *TINY, "--no-flip")).train.dataset
    assert not any(mirrored(kept))


def test_a_completed_run_drops_its_state_unless_keep_state(data, tmp_path, capsys):
    run, kept = tmp_path / "run", tmp_path / "kept"
    assert main(["train", str(data), *TINY, "--epochs", "1", "--out", str(run)]) == 0
    names = sorted(path.name for path in run.iterdir())
    assert "state.safetensors" not in names
    assert {"model.safetensors", "torso.json", "best", "metrics.csv", "report.html"} <= set(names)

    arguments = ["train", str(data), *TINY, "--epochs", "1", "--out", str(kept), "--keep-state"]
    assert main(arguments) == 0
    assert (kept / "state.safetensors").is_file()

    capsys.readouterr()
    assert main(["train", str(data), "--resume", str(run)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error == [
        f"torso: error: cannot resume: the run in '{run}' is complete; to train further, start "
        f"a new run with --weights {run / 'model.safetensors'} and another --out"
    ]


class Stop(Exception):
    """Raised by a recording stand-in once the learning rate is known."""


@pytest.mark.parametrize(
    "options, method, expected",
    [
        (["--weights", "{weights}"], "fine_tune", 1e-2),
        ([], "fit_one_cycle", 1e-2),
        (["--weights", "{weights}", "--lr", "3e-4"], "fine_tune", 3e-4),
    ],
)
def test_the_default_learning_rates(data, tmp_path, monkeypatch, options, method, expected):
    """Fine-tuning and training from random weights both peak at 1e-2 by default (measured by
    benchmarks/defaults.py); --lr overrides it."""
    import timm
    from safetensors.torch import save_file

    from torso.train.learner import Learner

    weights = tmp_path / "body.safetensors"
    body = timm.create_model("test_resnet").state_dict()
    save_file({k: v.contiguous() for k, v in body.items()}, weights)
    used = []

    def record(self, epochs, lr, **kwargs):
        used.append(lr)
        raise Stop

    monkeypatch.setattr(Learner, method, record)
    options = [option.format(weights=weights) for option in options]
    with pytest.raises(Stop):
        main(["train", str(data), *TINY, "--out", str(tmp_path / "run"), *options])
    assert used == [expected]
