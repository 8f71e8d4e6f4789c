"""`torso --help` and the commands that need no model answer without importing the task modules
(torchmetrics, timm, the models) or the server (starlette, uvicorn): only the command that is
run builds its parser."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import sys
from torso.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
heavy = ("torso.tasks.base", "torchmetrics", "timm", "starlette", "uvicorn")
heavy = sorted(m for m in heavy if m in sys.modules)
print("HEAVY", heavy)
"""


@pytest.mark.parametrize(
    "arguments",
    [
        ["--help"],
        ["check", "--help"],
        ["predict", "--help"],
        ["interpret", "--help"],
        ["serve", "--help"],
    ],
)
def test_help_imports_no_task_module(arguments):
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *arguments], capture_output=True, text=True, timeout=120
    )
    assert "usage: torso" in result.stdout
    assert "HEAVY []" in result.stdout


def test_the_top_level_help_lists_every_command():
    from torso.cli import COMMANDS

    result = subprocess.run(
        [sys.executable, "-m", "torso", "--help"], capture_output=True, text=True, timeout=120
    )
    for name in COMMANDS:
        assert f"    {name.replace('_', '-')} " in result.stdout
