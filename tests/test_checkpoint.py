"""Checkpoints: safetensors + JSON, rebuilt by the task, never unpickled; damage is caught."""

from __future__ import annotations

import json
import pickle
import random
import re

import numpy as np
import pytest
import torch
from PIL import Image

import torso
from torso.checkpoint import load_model, save_model
from torso.cli import main
from torso.config import RunConfig
from torso.errors import TorsoError
from torso.predictor import load
from torso.tasks import get_task
from torso.train.state import (
    capture_rng,
    load_training_state,
    optimizer_from_tensors,
    optimizer_to_tensors,
    restore_rng,
    save_training_state,
)


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    task = get_task("classify", label_smoothing=0.1)
    config = RunConfig(
        "classify", "test_resnet", 3, 32, classes=["a", "b", "c"], task_options=task.options
    )
    model = task.build_model(config).eval()
    save_model(model, config, tmp_path / "run")
    return tmp_path / "run", model


def test_round_trip_gives_the_same_outputs(saved):
    folder, model = saved
    assert sorted(p.name for p in folder.iterdir()) == ["model.safetensors", "torso.json"]
    loaded, config = load_model(folder)
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(loaded(x), model(x))
    assert config.classes == ("a", "b", "c") and config.task_options["label_smoothing"] == 0.1
    assert config.torso_version == torso.__version__


def test_torso_load_predicts_with_class_names(saved):
    folder, _ = saved
    learner = load(folder)
    records = learner.predict(torch.rand(3, 3, 32, 32))
    assert len(records) == 3 and {r["prediction"] for r in records} <= {"a", "b", "c"}


def test_loading_never_unpickles(saved, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("pickle used while loading a checkpoint")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    load_model(saved[0])


def test_truncated_weights_give_a_clear_error(saved):
    weights = saved[0] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(TorsoError, match="model.safetensors"):
        load_model(saved[0])


def test_altered_weights_give_a_clear_error(saved):
    weights = saved[0] / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF  # one flipped byte inside a tensor: still a valid safetensors file
    weights.write_bytes(bytes(data))
    with pytest.raises(TorsoError, match="altered or truncated"):
        load_model(saved[0])


def test_altered_description_gives_a_clear_error(saved):
    description = saved[0] / "torso.json"
    config = json.loads(description.read_text())
    config["head_options"] = {"hidden": [256]}  # a head of another shape than the weights'
    description.write_text(json.dumps(config))
    with pytest.raises(TorsoError, match="do not fit the model that torso.json describes"):
        load_model(saved[0])
    description.write_text(description.read_text()[:40])
    with pytest.raises(TorsoError, match="not valid JSON"):
        load_model(saved[0])


def test_missing_folder_or_file(tmp_path, saved):
    with pytest.raises(TorsoError, match="does not exist"):
        load_model(tmp_path / "nothing")
    (saved[0] / "model.safetensors").unlink()
    with pytest.raises(TorsoError, match="no model.safetensors"):
        load_model(saved[0])


def test_training_state_round_trip_with_optimizer_and_rng(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), betas=(0.9, 0.99))
    model(torch.rand(4, 3)).sum().backward()
    optimizer.step()
    tensors, info = optimizer_to_tensors(optimizer.state_dict())
    rng_tensors, rng_info = capture_rng()
    save_training_state(
        tmp_path / "state.safetensors",
        {**tensors, **rng_tensors},
        {"optimizer": info, "rng": rng_info, "epoch": 3},
    )
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    loaded, loaded_info = load_training_state(tmp_path)
    assert loaded_info["epoch"] == 3
    restore_rng(loaded, loaded_info["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    state = optimizer_from_tensors(loaded, loaded_info["optimizer"])
    fresh = torch.optim.AdamW(model.parameters())
    fresh.load_state_dict(state)
    original = optimizer.state_dict()
    for index, slots in original["state"].items():
        for name, value in slots.items():
            assert torch.equal(fresh.state_dict()["state"][index][name], value)
    assert fresh.param_groups[0]["betas"] == (0.9, 0.99)


def test_damaged_training_state_is_refused(tmp_path):
    save_training_state(tmp_path / "state.safetensors", {"x": torch.zeros(100)}, {"epoch": 1})
    path = tmp_path / "state.safetensors"
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(TorsoError, match="damaged or truncated"):
        load_training_state(path)
    with pytest.raises(TorsoError, match="does not exist"):
        load_training_state(tmp_path / "other.safetensors")


#: Edits a person may make to torso.json by hand, and what the error says (a regex).
HAND_EDITS = [
    (lambda d: d.update(size=[0, 10]), "size must be a positive whole number"),
    (lambda d: d.update(classes=5), "classes must be a list"),
    (lambda d: d.update(classes=["a", "b"]), "classes has 2 names but num_outputs is 3"),
    (lambda d: d.update(num_outputs=-1), "num_outputs must be a whole number of at least 1"),
    (lambda d: d.update(num_outputs=5, classes=None), "num_outputs is 5, but the weights give 3"),
    (lambda d: d.update(task="nonexistent"), "task: unknown task 'nonexistent'"),
    (lambda d: d.update(task_options={"bogus": 1}), "task_options: .*'bogus'"),
    (lambda d: d.update(head_options={"hidden": "x"}), r"head_options \{'hidden': 'x'\} do not"),
    (lambda d: d.update(head_options={"bogus": 1}), "head_options .*'bogus'"),
    (lambda d: d.update(stats=[[1], [2, 3]]), "stats must be"),
    (lambda d: d.update(backbone="no_such_net"), "unknown backbone 'no_such_net'"),
    (lambda d: d.update(in_channels=7), "in_channels is 7, but the weights take 3-channel"),
]


def edited(folder, change):
    """Apply `change` to the JSON object in `folder/torso.json` and write it back."""
    description = folder / "torso.json"
    data = json.loads(description.read_text())
    change(data)
    description.write_text(json.dumps(data))
    return folder


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.pop("backbone"), "lacks 'backbone'"),
        (lambda d: d.pop("size"), "lacks 'size'"),
        (lambda d: d.pop("weights_sha256"), "lacks 'weights_sha256'"),
        (lambda d: d.update(num_outputs="three"), "num_outputs must be a whole number"),
        (lambda d: d.update(size="big"), "size must be"),
        (lambda d: d.update(classes="a b c"), "classes must be a list"),
        (lambda d: d.update(stats=[[0.5], "x"]), "stats"),
        (lambda d: d.update(task_options=[1]), "task_options must be an object"),
        (lambda d: d.update(resize="stretch"), "resize must be one of"),
        (lambda d: d.update(format_version=99), "format_version 99, newer than"),
        (lambda d: d.update(format="something-else"), "not a torso model description"),
        *HAND_EDITS,
    ],
)
def test_a_hand_edited_torso_json_names_the_file_and_the_field(saved, change, message):
    folder = edited(saved[0], change)
    with pytest.raises(TorsoError, match=message) as error:
        load_model(folder)
    assert "torso.json" in str(error.value)


@pytest.mark.parametrize("change, message", HAND_EDITS)
def test_commands_on_a_hand_edited_run_print_one_line_and_exit_2(
    saved, tmp_path, capsys, change, message
):
    """`torso predict`, `export` and `embed` load the run the same way: each prints one line
    that names torso.json and the field, never a traceback."""
    folder = edited(saved[0], change)
    image = tmp_path / "image.png"
    Image.fromarray(np.zeros((20, 20, 3), dtype=np.uint8)).save(image)
    commands = [
        ["predict", str(folder), str(image)],
        ["export", str(folder), "--no-verify", "--out", str(tmp_path / "model.onnx")],
        ["embed", str(folder), str(image), "--out", str(tmp_path / "e.npy"), "--quiet"],
    ]
    for command in commands:
        assert main(command) == 2, command
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "torso.json" in err, (command, err)
        assert re.search(message, err), (command, err)


def test_a_version_1_torso_json_still_loads(saved):
    """The untyped description of torso 0.1 (format_version 1, size a number, no resize)."""
    folder, model = saved

    def version_1(data):
        data.update(format_version=1, size=32, torso_version="0.1.0")
        data.pop("resize")

    loaded, config = load_model(edited(folder, version_1))
    assert config.size == (32, 32) and config.resize == "squish" and config.torso_version == "0.1.0"
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(loaded(x), model(x))
    written = json.loads((folder / "torso.json").read_text())
    save_model(loaded, config, folder)
    rewritten = json.loads((folder / "torso.json").read_text())
    assert rewritten["format_version"] == 2 and rewritten["size"] == [32, 32]
    assert rewritten["weights_sha256"] == written["weights_sha256"]
