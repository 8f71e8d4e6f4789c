"""The architecture rules of ARCHITECTURE.md, checked on the source itself.

- Layers: a module imports only from the layers below its own (import-linter's contract in
  pyproject.toml, run the way `lint-imports` runs it).
- Tasks own everything task-specific: outside `torso/tasks/` no code compares a value with a
  task's name.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from torso.registry import TASKS

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "src" / "torso"


def test_import_layers_hold():
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, importlinter.cli as c; "
            "sys.exit(c.lint_imports(no_cache=True, no_logo=True))",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "Contracts: 1 kept, 0 broken" in result.stdout


def task_name_comparisons(tree: ast.AST) -> list[int]:
    """Line numbers of comparisons (==, !=, in, not in) against a task's name."""
    names = set(TASKS)
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        for operand in operands:
            values = (
                operand.elts if isinstance(operand, ast.Tuple | ast.List | ast.Set) else [operand]
            )
            if any(isinstance(v, ast.Constant) and v.value in names for v in values):
                lines.append(node.lineno)
                break
    return lines


def test_no_task_name_comparisons_outside_the_tasks():
    found = []
    for path in sorted(SOURCE.rglob("*.py")):
        if SOURCE / "tasks" in path.parents:
            continue
        for line in task_name_comparisons(ast.parse(path.read_text(), str(path))):
            found.append(f"{path.relative_to(ROOT)}:{line}")
    assert found == []


def test_the_task_name_check_finds_a_comparison():
    # The check above must be able to fail: a comparison written three ways is found.
    source = 'if task == "segment": pass\nif name in ("classify", "x"): pass\nok = "siamese" != t\n'
    assert task_name_comparisons(ast.parse(source)) == [1, 2, 3]


def test_the_learner_stays_a_loop_that_reads_on_a_few_screens():
    # Variations of a step live in their own modules (precision, placement, parallel, ...):
    # learner.py under 400 lines, no method over 60.
    path = SOURCE / "train" / "learner.py"
    text = path.read_text()
    assert len(text.splitlines()) < 400
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef):
            assert node.end_lineno - node.lineno + 1 <= 60, node.name
