"""Siamese pair models: the book's parameter count, shared body, groups, training to >= 90% pair
accuracy on generated data, saving/loading, `predict_pair` and `torso train --task siamese`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from torso.config import RunConfig
from torso.errors import TorsoError
from torso.models import count_parameters, freeze, param_groups
from torso.models.bodies import Body
from torso.models.siamese import SiameseModel, create_siamese_model
from torso.tasks import get_task
from torso.tasks.siamese import SiameseTask, predict_pair

COLOURS = {
    "red": (200, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 60, 210),
    "yellow": (220, 200, 40),
}


def make_colour_classes(root: Path, per_class: int, size: int = 32, seed: int = 0) -> Path:
    """Folders of noisy images, one colour a class: `root/<colour>/<i>.png`."""
    rng = np.random.default_rng(seed)
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            base = np.array(colour, dtype=float) + rng.normal(0, 25, 3)
            pixels = base + rng.normal(0, 30, (size, size, 3))
            image = np.clip(pixels, 0, 255).astype(np.uint8)
            Image.fromarray(image).save(root / name / f"{index}.png")
    return root


def test_resnet34_siamese_has_the_books_parameter_count():
    model = create_siamese_model("resnet34")
    assert isinstance(model, SiameseModel)
    assert not isinstance(model, torch.nn.Sequential)
    assert [name for name, _ in model.named_children()] == ["body", "head"]
    assert count_parameters(model) == 22_339_392
    assert count_parameters(model.body) == 21_284_672
    assert count_parameters(model.head) == 1_054_720
    # create_head(2 * 512, 2) with concat pooling: the first BatchNorm sees 4 * 512 features.
    assert model.head[2].num_features == 2048


def test_groups_are_the_bodys_then_the_head_and_freeze_trains_the_head():
    model = create_siamese_model("test_resnet")
    groups = param_groups(model)
    body_groups = model.body.groups()
    assert len(groups) == len(body_groups) + 1
    assert {id(p) for p in groups[-1]} == {id(p) for p in model.head.parameters()}
    freeze(model, train_bn=False)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in model.head.parameters()}


def test_forward_is_the_head_on_both_maps_concatenated_on_channels():
    torch.manual_seed(0)
    model = create_siamese_model("test_resnet").eval()
    images_a, images_b = torch.rand(3, 3, 32, 32), torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        logits = model(images_a, images_b)
        maps = torch.cat([model.body(images_a), model.body(images_b)], dim=1)
        expected = model.head(maps)
    assert logits.shape == (3, 2)
    assert maps.shape[1] == 2 * model.body.num_features
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    # One body: the same weights encode both images.
    assert sum(isinstance(m, Body) for m in model.modules()) == 1


def test_single_image_and_unequal_pairs_are_refused():
    model = create_siamese_model("test_resnet").eval()
    with pytest.raises(TorsoError, match="compares two images"):
        model(torch.rand(2, 3, 32, 32))
    with pytest.raises(TorsoError, match="in pairs"):
        model(torch.rand(2, 3, 32, 32), torch.rand(3, 3, 32, 32))


def test_task_loss_metrics_and_description():
    task = get_task("siamese")
    assert isinstance(task, SiameseTask) and task.main_metric == "accuracy"
    logits = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    targets = torch.tensor([0, 1])
    expected = torch.nn.functional.cross_entropy(logits, targets)
    torch.testing.assert_close(task.loss(logits, targets), expected)
    assert task.loss(logits, targets, reduction="none").shape == (2,)
    records = task.describe(task.activation(logits), ["different", "same"])
    assert records[0]["prediction"] == "different" and records[1]["prediction"] == "same"
    assert records[1]["probability"] == pytest.approx(float(torch.tensor([0.0, 3.0]).softmax(0)[1]))
    assert records[0]["same_probability"] == pytest.approx(1 - records[0]["probability"], abs=1e-6)
    with pytest.raises(TorsoError, match="2 outputs"):
        task.build_model(RunConfig("siamese", "test_resnet", 3, 32))


def test_siamese_reaches_90_percent_pair_accuracy_and_predicts_pairs(tmp_path, capsys):
    from torso.checkpoint import save_model
    from torso.config import RunConfig
    from torso.data import load_data
    from torso.data.datasets import PairDataset
    from torso.predictor import load
    from torso.train.learner import Learner, set_seed

    data = make_colour_classes(tmp_path / "colours", per_class=40)
    set_seed(0)
    dls = load_data(data, task="siamese", size=32, batch_size=16, augment=False, num_workers=0)
    task = get_task("siamese")
    config = RunConfig(
        task.name,
        "test_resnet",
        dls.num_outputs,
        32,
        classes=dls.classes,
        task_options=task.options,
    )
    model = task.build_model(config)
    assert isinstance(model, SiameseModel)
    learner = Learner(model, dls.train, dls.valid, task=task, config=config.to_dict())
    learner.fit_one_cycle(8, 5e-3)
    assert "accuracy" in learner.history[-1]

    # Accuracy over 160 pairs of the held-out images: the validation loader's pairs (epoch 0)
    # and four more pairings (the 32 pairs of one epoch alone would be a coarse measure).
    pairs = torch.utils.data.ConcatDataset(
        [PairDataset(dls.valid.dataset.images, fixed_epoch=epoch) for epoch in range(5)]
    )
    loader = torch.utils.data.DataLoader(pairs, batch_size=32, collate_fn=dls.valid.collate_fn)
    results = learner.validate(loader)
    assert len(pairs) == 5 * len(dls.valid_items) == 160
    assert results["accuracy"] >= 0.9

    folder = save_model(learner.model, config, tmp_path / "run")
    predictor = load(folder)
    red, blue = data / "red", data / "blue"
    same, probability = predict_pair(predictor, red / "0.png", red / "1.png")
    assert same and probability >= 0.5
    same, probability = predict_pair(predictor, red / "0.png", blue / "0.png")
    assert not same and probability >= 0.5
    with pytest.raises(TorsoError, match="missing.png"):
        predict_pair(predictor, red / "0.png", red / "missing.png")

    # The same from the command line: `torso predict RUN --pair A B`.
    from torso.cli import main

    capsys.readouterr()
    assert main(["predict", str(folder), "--pair", str(red / "2.png"), str(red / "3.png")]) == 0
    assert capsys.readouterr().out.startswith("same (probability")
    assert main(["predict", str(folder), "--pair", str(red / "2.png"), str(blue / "3.png")]) == 0
    assert capsys.readouterr().out.startswith("different (probability")
    assert main(["predict", str(folder), str(red / "2.png")]) == 2


def test_torso_train_task_siamese_writes_a_loadable_pair_model(tmp_path):
    from torso.cli import main

    data = make_colour_classes(tmp_path / "colours", per_class=8)
    out = tmp_path / "run"
    code = main(
        [
            "train",
            str(data),
            "--task",
            "siamese",
            "--backbone",
            "test_resnet",
            "--size",
            "32",
            "--batch-size",
            "8",
            "--epochs",
            "1",
            "--no-augment",
            "--workers",
            "0",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    from torso.predictor import load

    predictor = load(out)
    assert isinstance(predictor.model, SiameseModel)
    config = predictor.config
    assert config.task == "siamese" and config.classes == ("different", "same")
    same, probability = predict_pair(predictor, data / "red" / "0.png", data / "red" / "1.png")
    assert isinstance(same, bool) and 0.5 <= probability <= 1.0
    card = (out / "card.md").read_text()
    assert "This model tells whether two 32x32 images show the same class." in card
    assert "- training pairs: " in card and "--pair a.jpg b.jpg" in card
