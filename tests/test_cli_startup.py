"""Start-up: what `import torso`, `torso --help`, each command's `--help` and `torso predict`
import. Held structurally (which modules end up in `sys.modules` of a fresh interpreter), not by
timing: importing torch takes about a second and torchmetrics several more (it imports
torchvision, scipy and matplotlib), so a command that does not use them must not import them.

* `import torso`, `torso --help` and every command's `--help` import no torch at all, nor any
  task module for the top-level help; `torso train --help` lists every task's options, so it
  imports the task modules, and they import nothing heavy at their top.
* `torso predict` on a classification run imports torch and timm (to rebuild the body) but
  not torchmetrics, matplotlib or onnx.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from torso.cli import COMMANDS

#: Packages that take from tenths of a second to seconds to import.
HEAVY = (
    "torch",
    "torchvision",
    "timm",
    "torchmetrics",
    "matplotlib",
    "onnx",
    "onnxruntime",
    "starlette",
    "uvicorn",
)

PROBE = """
import json, sys
arguments = sys.argv[1:]
if arguments[0] == "import":
    import importlib
    for name in arguments[1:]:
        importlib.import_module(name)
else:
    from torso.cli import main
    try:
        main(arguments)
    except SystemExit:
        pass
print("MODULES " + json.dumps(sorted(sys.modules)))
"""


def imported_by(*arguments: str) -> tuple[set[str], str]:
    """The modules a fresh interpreter holds after `torso ARGUMENTS` (or, with `"import"` first,
    after importing the modules named), and what it printed."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *arguments], capture_output=True, text=True, timeout=300
    )
    line = [line for line in result.stdout.splitlines() if line.startswith("MODULES ")]
    assert line, result.stdout + result.stderr
    return set(json.loads(line[-1][len("MODULES ") :])), result.stdout


def heavy(modules: set[str]) -> list[str]:
    return sorted(name for name in HEAVY if name in modules)


def test_import_torso_imports_nothing_heavy():
    modules, _ = imported_by("import", "torso")
    assert heavy(modules) == []
    assert "torso.tasks.base" not in modules


def test_the_top_level_help_imports_no_task_module_and_no_torch():
    modules, out = imported_by("--help")
    assert "usage: torso" in out
    assert heavy(modules) == []
    assert not any(name.startswith("torso.tasks") for name in modules)
    assert "rich" not in modules  # only commands that print tables or progress import it


@pytest.mark.parametrize("command", [name.replace("_", "-") for name in COMMANDS])
def test_each_command_help_imports_no_torch(command):
    modules, out = imported_by(command, "--help")
    assert f"usage: torso {command}" in out
    assert heavy(modules) == []


def test_task_modules_import_nothing_heavy_at_their_top():
    from torso.registry import TASKS

    names = sorted({target.split(":")[0] for target in TASKS.values()})
    assert "torso.tasks.detect" in names and "torso.tasks.segment" in names
    modules, _ = imported_by("import", *names)
    assert heavy(modules) == []
    assert "numpy" not in modules


def test_train_help_lists_every_task_option_without_torch():
    from torso.registry import task_class, task_names

    modules, out = imported_by("train", "--help")
    assert heavy(modules) == []
    flags = [option.flag for name in task_names() for option in task_class(name).cli_options]
    assert "--detector" in flags and "--label-smoothing" in flags
    for flag in flags:
        assert flag in out


def test_predict_imports_the_model_libraries_but_not_metrics_plots_or_export(tmp_path):
    from test_cli_predict import write_images
    from test_predictor import saved_run

    run = saved_run(tmp_path / "run")
    images = write_images(tmp_path / "images", names=("a.png",)) / "a.png"
    modules, out = imported_by("predict", str(run), str(images))
    assert "a.png" in out
    assert {"torch", "timm"} <= modules
    unused = ("torchmetrics", "matplotlib", "onnx", "scipy")
    assert [name for name in unused if name in modules] == []
    assert "torso.plots" not in modules


def test_the_top_level_help_lists_every_command():
    result = subprocess.run(
        [sys.executable, "-m", "torso", "--help"], capture_output=True, text=True, timeout=120
    )
    for name in COMMANDS:
        assert f"    {name.replace('_', '-')} " in result.stdout
