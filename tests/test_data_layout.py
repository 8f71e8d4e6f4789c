"""Data layouts: torso.data reads what a task describes, and knows no task by name."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from data_builders import make_class_folders, make_segmentation
from PIL import Image

import torso.data
from torso import registry
from torso.cli import main
from torso.data import (
    DataLayout,
    NumberTargets,
    Targets,
    check_data,
    load_data,
    read_classes,
    show_batch,
)
from torso.errors import TorsoError
from torso.registry import get_task
from torso.tasks.base import Task


class ClassAsNumber(Targets):
    """A custom kind of target: the class index as one float, `(1,)`."""

    def encode(self, target, mask, num_classes):
        return torch.tensor([float(target)])

    def names(self, target, classes):
        return [classes[target]]

    def outputs(self, source, mask_values, ignore_index):
        return None, 1

    def caption(self, target, classes, target_names):
        return f"rank {float(target[0]):g}"


class RankTask:
    """A task outside the registry: class folders read as ranks (only the data protocol)."""

    name = "rank"

    def data_layout(self) -> DataLayout:
        return DataLayout(read=read_classes, targets=ClassAsNumber())


class TilesTask:
    """A registered task whose layout recognises folders holding a `tiles.txt`."""

    name = "tiles"

    def data_layout(self) -> DataLayout:
        return DataLayout(
            read=read_classes,
            targets=NumberTargets(),
            looks_like=lambda folder: (folder / "tiles.txt").is_file(),
        )


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> Path:
    return make_class_folders(tmp_path_factory.mktemp("cls"), {"low": 4, "mid": 4, "top": 4})


@pytest.mark.parametrize(
    ("task", "layout"),
    [
        ("classify", {"pairs": False, "masks": False, "looks_like": False}),
        ("multilabel", {"pairs": False, "masks": False, "looks_like": False}),
        ("regress", {"pairs": False, "masks": False, "looks_like": False}),
        ("segment", {"pairs": False, "masks": True, "looks_like": True}),
        ("siamese", {"pairs": True, "masks": False, "looks_like": False}),
    ],
)
def test_each_registered_task_describes_its_data(task, layout):
    described = get_task(task).data_layout()
    assert isinstance(described, DataLayout)
    assert described.pairs == layout["pairs"]
    assert described.targets.masks == layout["masks"]
    assert (described.looks_like is not None) == layout["looks_like"]


def test_a_task_object_outside_the_registry_gets_its_own_targets(folders, tmp_path):
    dls = load_data(folders, task=RankTask(), size=16, batch_size=4, num_workers=0)
    assert dls.task == "rank" and dls.num_outputs == 1 and dls.classes is None
    images, targets = next(iter(dls.train))
    assert images.shape == (4, 3, 16, 16)
    assert targets.dtype == torch.float32 and targets.shape == (4, 1)
    assert set(targets.flatten().tolist()) <= {0.0, 1.0, 2.0}
    report = check_data(folders, task=RankTask(), num_workers=1)
    assert report.task == "rank"
    assert sum(report.counts["train"].values()) + sum(report.counts["valid"].values()) == 12
    assert set(report.counts["train"]) <= {"low", "mid", "top"}
    picture = show_batch(dls, tmp_path / "ranks.png", max_items=4)
    assert Image.open(picture).size[0] > 100


def test_a_task_that_says_nothing_about_its_data_is_named():
    class Silent:
        name = "silent"

    with pytest.raises(TorsoError, match="data_layout"):
        load_data(".", task=Silent())
    with pytest.raises(NotImplementedError, match="data_layout"):
        Task().data_layout()


_NO_TASK_MODULES = """
import sys
from torso.data import ClassTargets, DataLayout, load_data, read_classes

class Plain:
    name = "plain"
    def data_layout(self):
        return DataLayout(read=read_classes, targets=ClassTargets())

dls = load_data(sys.argv[1], task=Plain(), size=8, batch_size=2, num_workers=0)
next(iter(dls.train))
loaded = sorted(name for name in sys.modules if name.startswith("torso.tasks"))
assert not loaded, loaded
"""


def test_torso_data_needs_no_task_module(folders):
    subprocess.run([sys.executable, "-c", _NO_TASK_MODULES, str(folders)], check=True, timeout=120)


def test_no_data_module_imports_the_tasks():
    """Tasks are above data: torso.data may reach a task only through torso.registry."""
    package = Path(torso.data.__file__).parent
    offenders = []
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.startswith("torso.tasks")]
    assert not offenders


def test_check_detects_a_task_by_its_layout(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(registry.TASKS, "tiles", f"{__name__}:TilesTask")
    seg = make_segmentation(tmp_path / "seg", count=3)
    assert main(["check", str(seg), "--json"]) == 0
    assert '"task": "segment"' in capsys.readouterr().out
    plain = make_class_folders(tmp_path / "plain", {"a": 2, "b": 2})
    assert main(["check", str(plain), "--json"]) == 0
    assert '"task": "classify"' in capsys.readouterr().out  # nothing recognises it: the fallback
    (plain / "tiles.txt").write_text("")
    assert main(["check", str(plain), "--json"]) == 0
    assert '"task": "tiles"' in capsys.readouterr().out
    assert main(["check", str(plain), "--task", "tiles"]) == 0
    assert "tiles data in" in capsys.readouterr().out
    with pytest.raises(SystemExit) as caught:
        main(["check", str(plain), "--task", "nosuchtask"])
    assert caught.value.code == 2
    error = capsys.readouterr().err
    assert "nosuchtask" in error and "segment" in error
