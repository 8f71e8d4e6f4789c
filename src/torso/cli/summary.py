"""`torso summary BACKBONE`: the body, the cut, the head, the shapes and the parameter groups."""

from __future__ import annotations

import argparse

from torso.errors import TorsoError

#: The command's line in `torso --help`.
HELP = "show a model's layers, shapes, cut and parameter groups"


def add_parser(subparsers) -> argparse.ArgumentParser:
    from torso.cli.options import add_task_options
    from torso.registry import TASKS

    parser = subparsers.add_parser(
        "summary",
        help=HELP,
        description=(
            "Build BACKBONE with a task's head (random weights, nothing is downloaded) and print "
            "the input, each body stage with its output shape and parameters, where the body is "
            "cut, each head layer, the totals and the parameter groups. "
            "Example: torso summary resnet34 --classes 37 --size 224"
        ),
    )
    parser.add_argument(
        "backbone",
        help="timm name (resnet34) or torchvision name (tv:resnet34); "
        "not used by --architecture unet2015, which has its own contracting path",
    )
    parser.add_argument("--classes", type=int, default=1000, help="number of outputs (1000)")
    parser.add_argument("--size", type=int, default=224, help="input image size in pixels (224)")
    parser.add_argument("--in-channels", type=int, default=3, help="input channels (3)")
    parser.add_argument(
        "--task",
        choices=list(TASKS),
        default="classify",
        help="the task whose model is built on the body (classify: body + create_head; "
        "segment: body + U-Net decoder; ...)",
    )
    add_task_options(parser)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    return parser


def run(args: argparse.Namespace) -> int:
    import json

    from torso.cli.options import chosen_task_options
    from torso.config import RunConfig
    from torso.registry import get_task
    from torso.tools.summary import render, summarize

    for name in ("classes", "size", "in_channels"):
        if getattr(args, name) < 1:
            raise TorsoError(f"--{name.replace('_', '-')} must be at least 1")
    task = get_task(args.task, **chosen_task_options(args))
    config = RunConfig(
        task=args.task,
        backbone=args.backbone,
        num_outputs=args.classes,
        size=args.size,
        in_channels=args.in_channels,
    )
    model = task.build_model(config)
    summary = summarize(model, args.size)
    if args.json:
        print(json.dumps(summary.as_dict(), indent=2))
        return 0
    from rich.console import Console

    console = Console()
    render(summary, console)
    for note in task.summary_notes(config, model):
        console.print(note)
    return 0
