"""`torso predict RUN IMAGES...`: predictions of a saved model for image files, as CSV."""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

from torso.cli.train import positive_int
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
    """The image files named, and those directly inside the folders named, in order."""
    from torso.data.decode import is_image_file

    paths: list[Path] = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and is_image_file(p))
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
    learner = load(folder, device=args.device)
    if learner.task.name == "siamese" or args.pair:
        return predict_pair(learner, args)
    if not args.images:
        raise TorsoError("give the images to predict: files or folders")
    paths = image_paths(args.images)
    if learner.task.name == "segment":
        return predict_segmentation(learner, paths, args)
    records = []
    for start in range(0, len(paths), args.batch_size):
        chunk = paths[start : start + args.batch_size]
        records.extend(learner.predict(chunk, tta=args.tta, batch_size=args.batch_size))
    columns = ["path"] + list(records[0])
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for path, record in zip(paths, records, strict=True):
        writer.writerow({"path": str(path), **record})
    if args.out:
        from torso.train.checkpoint import atomic_write

        atomic_write(args.out, buffer.getvalue().encode())
        print(f"wrote {len(records)} predictions to {args.out}")
    else:
        sys.stdout.write(buffer.getvalue())
    return 0


def predict_pair(learner, args: argparse.Namespace) -> int:
    """`--pair A B` with a Siamese run: prints "same" or "different" and its probability."""
    from torso.tasks.siamese import predict_pair as decide

    if learner.task.name != "siamese":
        raise TorsoError(f"--pair needs a Siamese run; '{args.run}' is a {learner.task.name} run")
    if not args.pair or args.images:
        raise TorsoError("a Siamese run compares two images: torso predict RUN --pair A B")
    same, probability = decide(learner.model, learner.config, *args.pair)
    verdict = "same" if same else "different"
    print(f"{verdict} (probability {probability:.3f}): {args.pair[0]} vs {args.pair[1]}")
    return 0


def predict_segmentation(learner, paths: list[Path], args: argparse.Namespace) -> int:
    """Masks, overlays and predictions.csv of a segmentation run, into the folder `--out`."""
    from torso.cli.masks import write_mask_predictions

    if not args.out:
        raise TorsoError("a segmentation model writes mask images: give --out FOLDER")
    csv_path = write_mask_predictions(
        learner.model,
        learner.config,
        paths,
        args.out,
        tta=args.tta,
        batch_size=args.batch_size,
        device=learner.device,
    )
    print(f"wrote {len(paths)} masks and overlays to {args.out}; class shares in {csv_path}")
    return 0
