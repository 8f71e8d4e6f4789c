"""`torso embed (RUN | BACKBONE) IMAGES... --out FILE`: pooled body features of image files.

Writes `FILE.npy` (float32, one row an image) with `FILE.json` beside it (file names and the
model's identity), or `FILE.parquet` when pyarrow is installed. See `torso.tools.embed`.
"""

from __future__ import annotations

import argparse
import sys

from torso.cli.options import add_weights_arguments, positive_int, pretrained_choice
from torso.errors import TorsoError

#: The command's line in `torso --help`.
HELP = "write image embeddings (pooled body features) to .npy or .parquet"


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Where a backbone's weights come from (shared with `torso similar`)."""
    add_weights_arguments(
        parser,
        pretrained="BACKBONE: the published pretrained weights",
        weights="BACKBONE: weights from a local file (safetensors)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="BACKBONE without weights: seed of the random weights (0), so they repeat",
    )


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "embed",
        help=HELP,
        description=(
            "Embed image files with the body of MODEL (a run folder of `torso train`, or a "
            "timm / torchvision backbone name): each image becomes its body's pooled features. "
            "Writes FILE.npy plus FILE.json (file names, model identity), or FILE.parquet when "
            "pyarrow is installed; search it with `torso similar`. "
            "Example: torso embed resnet34 --pretrained photos/ --out photos.npy --normalize"
        ),
    )
    parser.add_argument("model", metavar="MODEL", help="run folder, or backbone name (resnet34)")
    parser.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    parser.add_argument("--out", required=True, help="output file: NAME.npy or NAME.parquet")
    parser.add_argument(
        "--pool",
        choices=["avg", "concat"],
        default="avg",
        help="avg: mean of the final feature map (C numbers); concat: max and mean (2C)",
    )
    parser.add_argument("--normalize", action="store_true", help="scale each vector to length 1")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="batch size (64)")
    parser.add_argument(
        "--size", type=positive_int, help="image size in pixels (a run's own size, else 224)"
    )
    parser.add_argument(
        "--in-channels", type=positive_int, help="BACKBONE: image channels, 1, 3 or 4 (3)"
    )
    parser.add_argument(
        "--resize",
        choices=["squish", "crop", "pad"],
        help="how images become square (a run's own mode, else squish)",
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--skip-bad", action="store_true", help="skip unreadable images (and count them)"
    )
    parser.add_argument("--workers", type=int, help="image reading processes (auto)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.intermixed = True  # images before and after options: `MODEL a.jpg --normalize b/`
    return parser


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from torso.predictor import choose_device
    from torso.tools.embed import BadImageError, embed_files, list_images, load_embedder

    if args.workers is not None and args.workers < 0:
        raise TorsoError(f"--workers must be 0 or more, got {args.workers}")
    device = choose_device(args.device, "--device") if args.device else None
    files, root = list_images(args.images)
    embedder, identity = load_embedder(
        args.model,
        pretrained=pretrained_choice(args),
        size=args.size,
        in_channels=args.in_channels,
        resize=args.resize,
        pooling=args.pool,
        normalize=args.normalize,
        seed=args.seed,
    )
    console = Console(stderr=True, quiet=args.quiet)
    if identity.location.startswith("random"):
        console.print(
            f"embedding with random weights ({identity.location}): give --pretrained or "
            "--weights FILE for useful features"
        )
    progress = Progress(
        TextColumn("embedding"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=args.quiet,
    )
    with progress:
        task_id = progress.add_task("embed", total=len(files))
        try:
            result = embed_files(
                embedder,
                identity,
                files,
                args.out,
                root=root,
                batch_size=args.batch_size,
                skip_bad=args.skip_bad,
                num_workers=args.workers,
                device=device,
                on_batch=lambda count: progress.advance(task_id, count),
            )
        except BadImageError as error:
            progress.stop()
            print(f"torso: error: {error}", file=sys.stderr)
            return 1
    where = f"{result.path}" + (f" + {result.sidecar}" if result.sidecar else "")
    print(f"wrote {result.count} embeddings of {result.dim} numbers to {where}")
    print(f"model: {identity.describe()}")
    if result.skipped:
        print(f"skipped {len(result.skipped)} unreadable file(s):")
        for _, reason in result.skipped[:20]:
            print(f"  {reason}")  # the reason names the file
        if len(result.skipped) > 20:
            print(f"  ... and {len(result.skipped) - 20} more (listed in the index)")
    return 0
