"""`torso check DATA`: scan a data folder, print a summary and every problem with its file."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from torso.errors import TorsoError
from torso.registry import get_task, task_names

#: The task `--task auto` falls back on when no task's layout recognises the data.


#: The command's line in `torso --help`.
HELP = "scan data for unreadable, corrupt or mislabelled files before training"
FALLBACK_TASK = "classify"


class _TaskChoices:
    """`auto` and the registered tasks, looked up only when `--task` is given (finding the task
    modules imports them, which takes seconds)."""

    def __contains__(self, name: object) -> bool:
        return name == "auto" or name in task_names()

    def __iter__(self):
        return iter(["auto", *task_names()])


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "check",
        help=HELP,
        description=(
            "Read every file of DATA as `torso train` would and print a summary (images per "
            "class and split, sizes, modes, mask classes and pixel shares), then every problem "
            "with its file and reason. Exit status: 0 clean, 1 problems found, 2 bad arguments. "
            "Example: torso check ./photos"
        ),
    )
    parser.add_argument("data", help="data folder (or a CSV file of file names and labels)")
    parser.add_argument(
        "--task",
        choices=_TaskChoices(),
        default="auto",
        metavar="TASK",
        help="a task (classify, multilabel, regress, segment, siamese, ...) or auto: the task "
        "whose layout DATA has (images/ and masks/: segment), else classify (auto)",
    )
    parser.add_argument(
        "--csv",
        default=None,
        help="CSV of file names and labels: a path from here, or a file name inside DATA",
    )
    parser.add_argument(
        "--allow-outside-paths",
        action="store_true",
        help="let the CSV list files outside the data folder ('../x.png', absolute paths)",
    )
    parser.add_argument(
        "--label-delimiter", default=" ", help="multilabel: separator inside a label cell (' ')"
    )
    parser.add_argument(
        "--codes", default=None, help="segment: a codes file, or class names separated by commas"
    )
    parser.add_argument(
        "--ignore-index", type=int, default=255, help="segment: mask value of void pixels (255)"
    )
    parser.add_argument(
        "--valid-pct", type=float, default=0.2, help="share of a random validation split (0.2)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random split (0)")
    parser.add_argument(
        "--min-image-size", type=int, default=16, help="smallest side in pixels an image may have"
    )
    parser.add_argument("--workers", type=int, default=None, help="reading threads (the cores)")
    parser.add_argument(
        "--all",
        action="store_true",
        help="list every file with a problem (default: the first few of each kind)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def detect_task(data: Path) -> str:
    """The first registered task whose data layout recognises the folder `data`
    (`DataLayout.looks_like`), else `FALLBACK_TASK`."""
    for name in task_names():
        try:
            looks_like = get_task(name).data_layout().looks_like
        except (TorsoError, NotImplementedError):  # a task that needs options, or reads no data
            continue
        if looks_like is not None and looks_like(data):
            return name
    return FALLBACK_TASK


def _codes(value: str | None, data: Path):
    if value is None:
        return None
    candidate = Path(value) if Path(value).is_absolute() else data / value
    if candidate.is_file() or Path(value).is_file():
        return candidate if candidate.is_file() else Path(value)
    names = [name.strip() for name in value.split(",")]
    if not all(names):
        raise TorsoError(f"--codes '{value}': neither a file nor comma-separated class names")
    return names


@contextlib.contextmanager
def _progress_bar():
    """A `progress(done, total)` callback drawing a bar on a terminal's stderr, else None."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("reading files", total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _report_text(report, as_json: bool, show_all: bool = False) -> str:
    if not as_json:
        return report.text(shown_per_kind=None) if show_all else report.text()
    document = {
        "root": str(report.root),
        "task": report.task,
        "classes": report.classes,
        "images": report.images,
        "counts": {split: dict(counter) for split, counter in report.counts.items()},
        "modes": dict(report.modes),
        "mask_pixels": {str(k): v for k, v in sorted(report.mask_pixels.items())},
        "problems": [
            {"file": str(p.file), "kind": p.category, "reason": p.reason} for p in report.problems
        ],
    }
    return json.dumps(document, indent=2, ensure_ascii=False)


def run(args: argparse.Namespace) -> int:
    from torso.data import check_data

    data = Path(args.data)
    if not data.exists():
        raise TorsoError(f"data path '{data}' not found")
    if args.min_image_size < 1:
        raise TorsoError("--min-image-size must be at least 1")
    if args.workers is not None and args.workers < 1:
        raise TorsoError("--workers must be at least 1")
    task = args.task
    if task == "auto":
        task = FALLBACK_TASK if data.is_file() else detect_task(data)
    root = data.parent if data.is_file() else data
    with _progress_bar() as progress:
        report = check_data(
            data,
            task=task,
            csv=args.csv,
            label_delimiter=args.label_delimiter,
            codes=_codes(args.codes, root),
            ignore_index=args.ignore_index,
            valid_pct=args.valid_pct,
            seed=args.seed,
            min_image_size=args.min_image_size,
            num_workers=args.workers,
            progress=progress,
            allow_outside_paths=args.allow_outside_paths,
        )
    print(_report_text(report, args.json, args.all))
    return 0 if report.ok else 1
