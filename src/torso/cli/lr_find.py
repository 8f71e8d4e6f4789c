"""`torso lr-find DATA`: run the learning-rate finder, print the suggestion, save the plot."""

from __future__ import annotations

import argparse
from pathlib import Path

from torso.cli.train import (
    add_data_and_model_arguments,
    build_learner,
    check_inputs,
    check_writable,
    chosen_task_options,
    load_training_data,
    positive_int,
    pretrained_choice,
)
from torso.errors import TorsoError

#: The command's line in `torso --help`.
HELP = "find a good learning rate for DATA and a backbone"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "lr-find",
        help=HELP,
        description=(
            "Train a few batches while the learning rate grows from 1e-7 to 10, plot the loss "
            "against the rate and suggest a rate by fastai's valley rule. The finder trains the "
            "model as `torso train` would begin: with --pretrained the body is frozen, as in the "
            "first step of fine-tuning. "
            "Example: torso lr-find ./pets --pretrained --backbone resnet34"
        ),
    )
    add_data_and_model_arguments(parser)
    parser.add_argument("--num-it", type=positive_int, default=100, help="batches to try (100)")
    parser.add_argument("--out", default="lr_find.png", help="plot file (lr_find.png)")
    return parser


def run(args: argparse.Namespace) -> int:
    from torso.tasks import get_task
    from torso.train.learner import set_seed
    from torso.train.lr_find import find_learning_rate

    if args.num_it < 10:
        raise TorsoError(f"--num-it must be at least 10, got {args.num_it}")
    check_inputs(args)
    plot = Path(args.out)
    check_writable(plot.parent if str(plot.parent) else Path("."))
    task = get_task(args.task, **chosen_task_options(args))
    pretrained = pretrained_choice(args)
    set_seed(args.seed)
    dls = load_training_data(args)
    learner = build_learner(args, dls, task, pretrained=pretrained)
    result = find_learning_rate(
        learner, fine_tune=pretrained, num_it=args.num_it, plot=plot, quiet=args.quiet
    )
    print(f"suggested learning rate: {result.suggestion:.2e}  (plot: {result.plot})")
    return 0
