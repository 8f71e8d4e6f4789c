"""`torso predict RUN IMAGES...`: predictions of a saved model for image files, as CSV."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from torso.cli.options import positive_int
from torso.errors import TorsoError


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "predict",
        help="predict image files with a trained model",
        description=(
            "Load the model saved in RUN (a run folder of `torso train`, or its best/ folder) and "
            "write one CSV row per image: its path and the prediction. "
            "Example: torso predict runs/pets photos/ --out preds.csv"
        ),
    )
    parser.add_argument("run", help="folder with torso.json and model.safetensors")
    parser.add_argument("images", nargs="*", help="image files or folders of images")
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
    parser.add_argument("--best", action="store_true", help="use RUN/best (the best epoch)")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="batch size (32)")
    parser.add_argument("--device", help="cpu, cuda ... (default cpu)")
    return parser


def image_paths(inputs: list[str]) -> list[Path]:
    """The image files named, and those inside the folders named (subfolders included, hidden
    ones skipped, as the data sources list them), in order."""
    from torso.data.decode import is_image_file

    paths: list[Path] = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found = [
                file
                for file in sorted(path.rglob("*"))
                if file.is_file()
                and is_image_file(file)
                and not any(part.startswith(".") for part in file.relative_to(path).parts)
            ]
            if not found:
                raise TorsoError(f"folder '{path}' contains no image files")
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        else:
            raise TorsoError(f"'{path}' does not exist")
    return paths


def run(args: argparse.Namespace) -> int:
    from torso.predictor import load

    folder = Path(args.run) / "best" if args.best else Path(args.run)
    predictor = load(folder, device=args.device)
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
    out = Path(args.out) if args.out else None
    records = task.predict_files(predictor, paths, out, tta=args.tta, batch_size=args.batch_size)
    if not args.pair:
        accuracy = task.folder_accuracy(records, [p.parent.name for p in paths], predictor.config)
        if accuracy is not None:
            # To stderr, so that the CSV printed to the screen stays a CSV.
            print(
                f"accuracy {accuracy:.4f} against the folder names ({len(paths)} images)",
                file=sys.stderr,
            )
    return 0
