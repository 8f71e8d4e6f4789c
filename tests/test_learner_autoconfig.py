"""A model trained in Python, with a Learner given no RunConfig, saves, loads and predicts files
as a `torso train` run does: the Learner makes the config from the model, the task, the data and
the first training batch."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from test_learner_shapes import write_shape_folder
from torch.utils.data import DataLoader, TensorDataset

import torso
from torso.data import load_data
from torso.errors import TorsoError
from torso.tasks import get_task
from torso.train.learner import Learner


def test_a_learner_on_load_data_saves_a_model_that_predicts_class_names(tmp_path):
    root = write_shape_folder(tmp_path / "shapes", per_class=6, size=24)
    dls = load_data(root, size=24, batch_size=4, num_workers=0)
    model = torso.create_model("test_resnet", num_outputs=dls.num_outputs)
    learner = Learner(model, dls, task=get_task("classify"), device="cpu")
    assert learner.valid_loader is dls.valid and learner.config.classes == tuple(dls.classes)
    learner.fit_one_cycle(1, 1e-3)
    assert "valid_loss" in learner.history[-1]

    learner.save_model(tmp_path / "model")
    loaded = torso.load(tmp_path / "model")
    config = loaded.config
    assert (config.task, config.backbone, config.num_outputs) == ("classify", "test_resnet", 3)
    assert config.size == (24, 24) and config.in_channels == 3
    assert config.classes == ("circle", "square", "triangle")
    assert config.stats == model.body.stats
    records = loaded.predict([root / "circle" / "0.png", root / "square" / "1.png"])
    assert len(records) == 2 and all(r["prediction"] in config.classes for r in records)
    # The same answers as the Learner's own model gives on the same files.
    assert records == learner.predict([root / "circle" / "0.png", root / "square" / "1.png"])


def test_a_learner_on_plain_loaders_takes_size_and_outputs_from_the_first_batch(tmp_path):
    images = torch.rand(8, 1, 20, 20)
    labels = torch.tensor([0, 1, 2, 3] * 2)
    train = DataLoader(TensorDataset(images, labels), batch_size=4)
    model = torso.create_model("test_resnet", num_outputs=4, in_channels=1)
    learner = Learner(model, train, task=get_task("classify"), device="cpu")
    assert learner.config is None  # nothing seen yet
    with pytest.raises(TorsoError, match="give it config=RunConfig"):
        learner.save_model(tmp_path / "early")
    learner.fit(1, 1e-3)
    config = learner.config
    assert config.size == (20, 20) and config.in_channels == 1 and config.num_outputs == 4
    assert config.classes is None and config.resize == "squish"

    learner.save_model(tmp_path / "model")
    picture = tmp_path / "x.png"
    Image.fromarray((torch.rand(40, 30) * 255).byte().numpy()).save(picture)
    records = torso.load(tmp_path / "model").predict(str(picture))
    assert records[0]["prediction"] in {"0", "1", "2", "3"}


def test_a_model_the_config_cannot_rebuild_is_not_saved(tmp_path):
    images, labels = torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 0, 1])
    train = DataLoader(TensorDataset(images, labels), batch_size=4)
    model = torso.create_model("test_resnet", num_outputs=2, hidden=[32])  # not the default head
    learner = Learner(model, train, task=get_task("classify"), device="cpu")
    learner.fit(1, 1e-3)
    with pytest.raises(TorsoError, match="not what create_model\\('test_resnet', 2\\) builds"):
        learner.save_model(tmp_path / "model")
    assert not (tmp_path / "model").exists()


class NamedTensors(TensorDataset):
    classes = ["cat", "dog"]  # as torchvision's ImageFolder names its classes


def test_class_names_come_from_a_loaders_dataset(tmp_path):
    images, labels = torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 0, 1])
    train = DataLoader(NamedTensors(images, labels), batch_size=4)
    model = torso.create_model("test_resnet", num_outputs=2)
    learner = Learner(model, train, task=get_task("classify"), device="cpu")
    learner.fit(1, 1e-3)
    assert learner.config.classes == ("cat", "dog")
    learner.save_model(tmp_path / "model")
    [record] = torso.load(tmp_path / "model").predict(torch.rand(3, 16, 16))
    assert record["prediction"] in {"cat", "dog"}
