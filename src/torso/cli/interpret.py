"""`torso interpret RUN IMAGES... --out DIR`: heat maps of what drove a model's answers.

For every image (folders are searched recursively) the class activation map of the class the
model predicts (or of `--target`) is drawn over the image at its own size and written to
`DIR/<stem>_cam.png`, with `DIR/interpret.json` indexing them (`torso.tools.interpret`). A file
that cannot be read is reported on one line and left out, as `torso predict` does; a run whose
task has no class activation map (regression, segmentation, pairs, detection) exits with
status 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from torso.cli.options import positive_int
from torso.errors import TorsoError
from torso.numbers import unit_interval

#: The command's line in `torso --help`.
HELP = "draw heat maps of what drove a classifier's answers over its images"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "interpret",
        help=HELP,
        description=(
            "Load the classification or multi-label model saved in RUN and, for every image, "
            "write its class activation map (Grad-CAM) drawn over it as DIR/<name>_cam.png, "
            "and DIR/interpret.json: each file, the prediction, the class explained, its "
            "probability and the overlay. Example: torso interpret runs/pets photos/ --out cams"
        ),
    )
    parser.add_argument("run", help="folder with torso.json and model.safetensors")
    parser.add_argument("images", nargs="+", help="image files or folders of images")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the heat maps")
    parser.add_argument(
        "--target",
        metavar="CLASS",
        help="explain this class (name or index) in every image (default: the class the "
        "model gives the highest probability)",
    )
    parser.add_argument(
        "--alpha",
        type=unit_interval,
        default=None,
        help="weight of the heat map over the image, 0 to 1 (0.5)",
    )
    parser.add_argument("--best", action="store_true", help="use RUN/best (the best epoch)")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="batch size (16)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, mps ... (default cpu)")
    parser.intermixed = True
    return parser


def target_class(text: str | None, classes: list[str]) -> int | str | None:
    """`--target` as a class name, or as an index when it is a number that names no class."""
    if text is None or text in classes:
        return text
    if text.isdigit():
        return int(text)
    raise TorsoError(f"--target '{text}' is not a class of this run: {', '.join(classes)}")


def run(args: argparse.Namespace) -> int:
    from torso.cli.predict import NothingToPredictError, image_paths, unreadable_images
    from torso.plots import HEATMAP_ALPHA
    from torso.predictor import choose_device, load
    from torso.tools.interpret import INDEX, interpret_files

    device = choose_device(args.device, "--device") if args.device else None
    predictor = load(Path(args.run) / "best" if args.best else Path(args.run), device=device)
    target = target_class(args.target, predictor.config.class_names())
    paths = image_paths(args.images)
    bad = unreadable_images(paths, predictor.config.in_channels)
    for path, reason in bad.items():
        print(f"torso: skipped {path}: {reason}", file=sys.stderr)
    paths = [path for path in paths if path not in bad]
    if not paths:
        raise NothingToPredictError(
            f"nothing to explain: none of the {len(bad)} image(s) could be read"
        )
    alpha = HEATMAP_ALPHA if args.alpha is None else args.alpha
    records = interpret_files(
        predictor, paths, args.out, target=target, alpha=alpha, batch_size=args.batch_size
    )
    print(f"wrote {len(records)} heat maps to {args.out}; index in {Path(args.out) / INDEX}")
    return 0
