"""`torso export RUN --format onnx|torchscript`: the run's model as one file, checked."""

from __future__ import annotations

import argparse

from torso.cli.options import positive_float, positive_int

#: The command's line in `torso --help`.
HELP = "export a trained model to ONNX or TorchScript"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "export",
        help=HELP,
        description=(
            "Export the model saved in RUN (a run folder of `torso train`, or its best/ folder) "
            "for serving without torso: it takes float images (N, C, H, W) in [0, 1], "
            "normalisation included. The export is run on random images and compared with "
            "PyTorch before it is written; a JSON file beside it gives the classes, size and "
            "stats. Example: torso export runs/pets --format onnx --dynamic"
        ),
    )
    parser.add_argument("run", help="folder with torso.json and model.safetensors")
    parser.add_argument(
        "--format", choices=["onnx", "torchscript"], default="onnx", help="file format (onnx)"
    )
    parser.add_argument(
        "--out",
        help="file to write (default RUN/model.onnx or RUN/model.torchscript.pt); "
        "the description goes beside it with the suffix .json",
    )
    parser.add_argument(
        "--size",
        type=positive_int,
        nargs="+",
        metavar="S",
        help="input size: S, or HEIGHT WIDTH (default: the trained size)",
    )
    parser.add_argument(
        "--dynamic",
        action="store_true",
        help="leave batch size, height and width free (checked at batch 2 and a larger size)",
    )
    parser.add_argument(
        "--tolerance",
        type=positive_float,
        default=1e-4,
        help="largest allowed difference from PyTorch's outputs (1e-4)",
    )
    parser.add_argument(
        "--no-verify", action="store_true", help="do not run the export to compare it"
    )
    parser.add_argument(
        "--check-image",
        metavar="FILE",
        help="also compare on this image, prepared as validation prepares it (trained size)",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    from torso.errors import TorsoError
    from torso.tools.export import export_run

    size = None
    if args.size is not None:
        if len(args.size) > 2:
            raise TorsoError(f"--size takes S or HEIGHT WIDTH, got {len(args.size)} numbers")
        size = (args.size[0], args.size[-1])
    result = export_run(
        args.run,
        format=args.format,
        out=args.out,
        size=size,
        dynamic=args.dynamic,
        verify=not args.no_verify,
        tolerance=args.tolerance,
        check_image=args.check_image,
    )
    if result.max_abs_diff is None:
        print(f"exported {result.path} (not checked)")
    else:
        shapes = ", ".join("x".join(map(str, shape)) for shape in result.checked_shapes)
        print(
            f"exported {result.path}: max abs difference from PyTorch {result.max_abs_diff:.2e} "
            f"(inputs {shapes})"
        )
    print(f"description: {result.description}")
    return 0
