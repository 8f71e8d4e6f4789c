"""`torso predict RUN IMAGES...`: predictions of a saved model for image files, as CSV.

Every image is decoded first, as `torso check` decodes it: a file that cannot be read is
reported on one line (the file and what is wrong) and left out, the others are predicted and
written. The exit status is 0, or 1 with `--strict` when a file was left out (and always when
no image at all could be read).
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from torso.cli.options import positive_int
from torso.errors import TorsoError

#: Threads that decode the images before prediction (PIL decodes without holding the GIL).


#: The command's line in `torso --help`.
HELP = "predict image files with a trained model"
CHECK_THREADS = 8


class NothingToPredictError(TorsoError):
    """Every image given was left out as unreadable."""

    exit_code = 1  # bad data, as `torso check` reports it


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "predict",
        help=HELP,
        description=(
            "Load the model saved in RUN (a run folder of `torso train`, or its best/ folder) and "
            "write one CSV row per image: its path and the prediction. An image that cannot "
            "be read is reported (the file and what is wrong) and left out; the others are "
            "predicted, and the exit status is 0 (1 with --strict). "
            "Example: torso predict runs/pets photos/ --out preds.csv"
        ),
    )
    parser.add_argument("run", help="folder with torso.json and model.safetensors")
    parser.add_argument("images", nargs="*", default=[], help="image files or folders of images")
    parser.add_argument(
        "--pair",
        nargs=2,
        metavar=("A", "B"),
        help="Siamese run: whether images A and B show the same thing, with its probability",
    )
    parser.add_argument(
        "--out",
        help="CSV file to write (default: print to the screen); for a segmentation run, the "
        "folder for the mask PNGs, overlays and predictions.csv",
    )
    parser.add_argument("--tta", action="store_true", help="average with mirrored images")
    parser.add_argument(
        "--overlays",
        metavar="DIR",
        help="write each image with its answer drawn on it into DIR (detection: the boxes, "
        "labelled with class and score)",
    )
    parser.add_argument("--best", action="store_true", help="use RUN/best (the best epoch)")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="batch size (32)")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit with status 1 when an image could not be read (it is reported and left out "
        "either way)",
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:1, mps ... (default cpu)")
    parser.add_argument(
        "--task-option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="change a task option the run saved, for this prediction only (repeatable); "
        "detect: score_threshold=0.3 keeps the boxes scoring at least 0.3",
    )
    parser.intermixed = True  # `torso predict RUN --best IMAGES` as well as `RUN IMAGES --best`
    return parser


def prediction_overrides(pairs: list[str], task, run: str) -> dict:
    """`--task-option NAME=VALUE` words → the task options they set, each parsed by its
    `TaskOption.type`. Only the run's task's `prediction_options` may be changed; anything else
    (a name it fixes at training, another task's option, a bad value) is a `TorsoError`."""
    changeable = {o.name: o for o in task.cli_options if o.name in task.prediction_options}
    named = ", ".join(changeable) or "none"
    given = {}
    for pair in pairs:
        name, equals, text = pair.partition("=")
        name = name.strip().lstrip("-").replace("-", "_")
        if not equals or name not in changeable:
            raise TorsoError(
                f"--task-option {pair!r}: a {task.name} run such as '{run}' takes NAME=VALUE "
                f"with NAME one of: {named}"
            )
        try:
            given[name] = changeable[name].type(text)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as error:
            raise TorsoError(f"--task-option {pair!r}: {error}") from None
    return given


def image_paths(inputs: list[str]) -> list[Path]:
    """The image files named, and those inside the folders named (subfolders included, hidden
    ones skipped, as the data sources list them), in order."""
    from torso.data.sources import image_files

    paths: list[Path] = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found = image_files(path)
            if not found:
                raise TorsoError(f"folder '{path}' contains no image files")
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        else:
            raise TorsoError(f"'{path}' does not exist")
    return paths


def unreadable_images(paths: list[Path], in_channels: int) -> dict[Path, str]:
    """The files of `paths` that cannot be decoded and converted to `in_channels` channels, as
    `torso check` and training decode them, each with what is wrong."""
    from torso.data.decode import ImageReadError, converted, decode_image

    def problem(path: Path) -> str | None:
        try:
            # As `torso check` decodes: a JPEG draft decodes at a reduced scale, faster, but
            # still reads the whole stream, so a truncated file is caught all the same.
            converted(decode_image(path, draft_size=(64, 64)).image, in_channels, path)
        except ImageReadError as error:
            return error.reason
        return None

    threads = max(1, min(CHECK_THREADS, os.cpu_count() or 1, len(paths)))
    with ThreadPoolExecutor(threads) as pool:
        found = list(pool.map(problem, paths))
    return {path: reason for path, reason in zip(paths, found, strict=True) if reason is not None}


def run(args: argparse.Namespace) -> int:
    from torso.predictor import choose_device, load

    device = choose_device(args.device, "--device") if args.device else None
    folder = Path(args.run) / "best" if args.best else Path(args.run)
    predictor = load(folder, device=device)
    overrides = prediction_overrides(args.task_option, predictor.task, args.run)
    if overrides:
        from torso.tasks import get_task

        predictor.task = get_task(predictor.task.name, **{**predictor.task.options, **overrides})
    task = predictor.task
    if args.pair:
        if args.images:
            raise TorsoError("give either --pair A B or images, not both")
        if task.images_per_sample != 2:
            raise TorsoError(f"--pair needs a Siamese run; '{args.run}' is a {task.name} run")
        paths = [Path(name) for name in args.pair]
    elif task.images_per_sample == 2:
        raise TorsoError("a Siamese run compares two images: torso predict RUN --pair A B")
    elif not args.images:
        raise TorsoError("give the images to predict: files or folders")
    else:
        paths = image_paths(args.images)
    bad = unreadable_images(paths, predictor.config.in_channels)
    for path, reason in bad.items():
        print(f"torso: skipped {path}: {reason}", file=sys.stderr)
    if bad:
        # A pair with an unreadable image is left out whole.
        group, given = task.images_per_sample, len(paths)
        samples = [paths[start : start + group] for start in range(0, given, group)]
        paths = [path for sample in samples if not set(sample) & bad.keys() for path in sample]
        if not paths:
            raise NothingToPredictError(
                f"nothing to predict: {len(bad)} of the {given} image(s) could not be read"
            )
        print(
            f"torso: {len(bad)} unreadable image(s) left out; predicting {len(paths)} image(s)",
            file=sys.stderr,
        )
    out = Path(args.out) if args.out else None
    overlays = Path(args.overlays) if args.overlays else None
    records = task.predict_files(
        predictor, paths, out, tta=args.tta, batch_size=args.batch_size, overlays=overlays
    )
    if not args.pair:
        accuracy = task.folder_accuracy(records, [p.parent.name for p in paths], predictor.config)
        if accuracy is not None:
            # To stderr, so that the CSV printed to the screen stays a CSV.
            print(
                f"accuracy {accuracy:.4f} against the folder names ({len(paths)} images)",
                file=sys.stderr,
            )
    return 1 if bad and args.strict else 0
