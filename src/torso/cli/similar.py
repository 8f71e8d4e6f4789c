"""`torso similar INDEX IMAGE [-k 5]`: the images of an index most similar to a query image.

The query is embedded by the model that made the index (its identity is stored with it); a
different model, given with `--model`, is refused with what differs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from torso.cli.embed import add_model_arguments
from torso.cli.options import positive_int, pretrained_choice
from torso.errors import TorsoError

#: The command's line in `torso --help`.
HELP = "find the images of an embedding index most similar to an image"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "similar",
        help=HELP,
        description=(
            "Embed IMAGE with the model that made INDEX (written by `torso embed`) and print "
            "the K most similar images of the index by cosine similarity. "
            "Example: torso similar photos.npy query.jpg -k 5"
        ),
    )
    parser.add_argument("index", help="the index: NAME.npy (with NAME.json) or NAME.parquet")
    parser.add_argument("image", help="the query image file")
    parser.add_argument("-k", type=positive_int, default=5, help="how many neighbours (5)")
    parser.add_argument(
        "--model",
        "--backbone",
        dest="model",
        help="embed the query with this run folder or backbone (refused if not the index's)",
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--backend",
        choices=["auto", "numpy", "faiss"],
        default="auto",
        help="auto: faiss for 100,000+ rows when installed, else NumPy",
    )
    parser.add_argument("--json", action="store_true", help="print the neighbours as JSON")
    return parser


def query_embedder(args: argparse.Namespace, index):
    """The model that embeds the query: `--model` if given, else the one the index names."""
    from torso.tools.embed import check_same_model, load_embedder

    made = index.identity
    if args.model is None and (args.weights or args.pretrained):
        raise TorsoError("--weights and --pretrained choose the weights of --model; give --model")
    shape = {
        "size": made.size,
        "resize": made.resize,
        "pooling": made.pooling,
        "normalize": made.normalize,
    }
    if args.model is not None:
        is_run = Path(args.model).is_dir()
        embedder, identity = load_embedder(
            args.model,
            pretrained=pretrained_choice(args),
            in_channels=None if is_run else made.in_channels,
            seed=args.seed,
            **shape,
        )
    elif made.source == "run":
        if not Path(made.location).is_dir():
            raise TorsoError(
                f"the index was made by the run '{made.location}', which no longer exists; "
                "give the model with --model"
            )
        embedder, identity = load_embedder(made.location, **shape)
    else:
        if made.location == "pretrained":
            pretrained: bool | str = True
        elif made.location.startswith("random seed "):
            pretrained = False
        else:
            pretrained = made.location
            if not Path(pretrained).is_file():
                raise TorsoError(
                    f"the index was made with the weights file '{pretrained}', which no longer "
                    "exists; give the model with --model and --weights"
                )
        seed = int(made.location.rsplit(" ", 1)[1]) if pretrained is False else 0
        embedder, identity = load_embedder(
            made.backbone,
            pretrained=pretrained,
            in_channels=made.in_channels,
            seed=seed,
            **shape,
        )
    check_same_model(made, identity, str(index.path))
    return embedder, identity


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from torso.tools.embed import embed_query, read_index, search

    index = read_index(args.index)
    if len(index.files) == 0:
        raise TorsoError(f"the index '{index.path}' is empty")
    if not Path(args.image).is_file():
        raise TorsoError(f"query image '{args.image}' does not exist")
    embedder, _ = query_embedder(args, index)
    query = embed_query(embedder, index.identity, [args.image])[0]
    rows, scores = search(index.vectors, query, args.k, backend=args.backend)
    neighbours = [
        {"rank": rank, "similarity": round(float(score), 6), "file": index.files[row]}
        for rank, (row, score) in enumerate(zip(rows, scores, strict=True), start=1)
    ]
    if args.json:
        print(json.dumps({"query": args.image, "neighbours": neighbours}, indent=1))
        return 0
    table = Table(title=f"most similar to {args.image} in {index.path} ({len(index.files)} images)")
    table.add_column("rank", justify="right")
    table.add_column("similarity", justify="right")
    table.add_column("file")
    for neighbour in neighbours:
        table.add_row(str(neighbour["rank"]), f"{neighbour['similarity']:.4f}", neighbour["file"])
    Console().print(table)
    return 0
