"""Command-line pieces that several commands share: number types, where weights come from, and
the options each task declares.

Each is defined once here, so `torso train`, `lr-find`, `embed`, `similar`, `predict` and
`export` check the same things with the same messages.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from torso.errors import TorsoError
from torso.numbers import fraction, positive_float, positive_int

__all__ = [
    "add_task_options",
    "add_weights_arguments",
    "chosen_task_options",
    "fraction",
    "positive_float",
    "positive_int",
    "pretrained_choice",
]


def add_weights_arguments(
    parser: argparse.ArgumentParser, *, pretrained: str, weights: str
) -> None:
    """`--pretrained` or `--weights FILE` (not both), with each command's help text."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--pretrained", action="store_true", help=pretrained)
    group.add_argument("--weights", metavar="FILE", help=weights)


def pretrained_choice(args: argparse.Namespace) -> bool | str:
    """False, True (the hub or an installed package), or a local weights file."""
    if args.weights:
        if not Path(args.weights).is_file():
            raise TorsoError(f"--weights: '{args.weights}' is not a file")
        return args.weights
    return bool(args.pretrained)


def add_task_options(parser: argparse.ArgumentParser) -> None:
    """Every registered task's options (`Task.cli_options`), grouped per task in --help; an
    option that several tasks declare appears once, in the first one's group."""
    from torso.registry import task_class, task_names

    declared: dict[str, tuple[Any, list[str]]] = {}
    groups: dict[str, list[Any]] = {}
    for name in task_names():
        for option in getattr(task_class(name), "cli_options", ()):
            if option.flag in declared:
                declared[option.flag][1].append(name)
                continue
            declared[option.flag] = (option, [name])
            groups.setdefault(name, []).append(option)
    for name, options in groups.items():
        group = parser.add_argument_group(f"{name} options")
        for option in options:
            tasks = ", ".join(declared[option.flag][1])
            keywords: dict[str, Any] = {"dest": option.name, "help": f"{tasks}: {option.help}"}
            if option.type is bool:
                group.add_argument(option.flag, action="store_true", **keywords)
                continue
            keywords.update(type=option.type, default=option.default)
            if option.choices is not None:
                keywords["choices"] = option.choices
            if option.nargs is not None:
                keywords["nargs"] = option.nargs
            if option.metavar is not None:
                keywords["metavar"] = option.metavar
            group.add_argument(option.flag, **keywords)


def chosen_task_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options of the task `args.task` that the command line sets to other than their
    defaults (a list of values becomes a tuple), for `get_task(args.task, **options)`.

    An option that only other tasks declare, set on the command line, is a `TorsoError`
    (`--architecture` belongs to segment, not to classify).
    """
    from torso.registry import task_class, task_names

    unchanged = object()  # None may be a chosen value (a run's stored decoder_width)

    def given(option) -> Any:
        value = getattr(args, option.name, option.default)
        value = tuple(value) if isinstance(value, list) else value
        changed = value != option.default and not (option.type is bool and value is False)
        return value if changed else unchanged

    mine = getattr(task_class(args.task), "cli_options", ())
    values = {option.name: given(option) for option in mine}
    options = {name: value for name, value in values.items() if value is not unchanged}
    names = set(values)
    for other in task_names():
        for option in getattr(task_class(other), "cli_options", ()):
            # (None: what a run saved by an older torso stored for another task's option)
            if option.name not in names and given(option) not in (unchanged, None):
                raise TorsoError(f"{option.flag} is an option of --task {other}, not {args.task}")
    return options
