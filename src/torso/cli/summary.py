"""`torso summary BACKBONE`: the body, the cut, the head, the shapes and the parameter groups."""

from __future__ import annotations

import argparse

from rich.console import Console

from torso.errors import TorsoError

DEFAULT_DECODER_CAP = 256


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "summary",
        help="show a model's layers, shapes, cut and parameter groups",
        description=(
            "Build BACKBONE with a task head (random weights, nothing is downloaded) and print "
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
        choices=["classify", "segment"],
        default="classify",
        help="classify: body + create_head; segment: body + dynamic U-Net decoder",
    )
    parser.add_argument(
        "--decoder-width",
        type=int,
        default=None,
        help=f"segment: cap on the decoder's widths (compared with {DEFAULT_DECODER_CAP} if unset)",
    )
    parser.add_argument(
        "--architecture",
        choices=["dynamic_unet", "unet2015"],
        default="dynamic_unet",
        help="segment: a U-Net decoder on BACKBONE (dynamic_unet) or the 2015 paper's U-Net with "
        "padded convolutions, as torso train builds it (unet2015)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    return parser


def run(args: argparse.Namespace) -> int:
    import json

    from torso.models import create_model
    from torso.models.bodies import create_body
    from torso.tools.summary import render, summarize, summarize_segmentation

    for name in ("classes", "size", "in_channels"):
        if getattr(args, name) < 1:
            raise TorsoError(f"--{name.replace('_', '-')} must be at least 1")
    if args.task != "segment" and args.architecture != "dynamic_unet":
        raise TorsoError("--architecture is an option of --task segment")
    console = Console()
    if args.task == "classify":
        model = create_model(args.backbone, args.classes, in_channels=args.in_channels)
        summary = summarize(model, args.size)
    elif args.architecture == "unet2015":
        from torso.models.segmentation import UNet2015

        model = UNet2015(args.in_channels, args.classes, padding=True)
        summary = summarize_segmentation(model, args.size)
    else:
        from torso.models.segmentation import DynamicUnet

        body = create_body(args.backbone, in_channels=args.in_channels)
        model = DynamicUnet(body, args.classes, decoder_width=args.decoder_width)
        summary = summarize_segmentation(model, args.size)
    if args.json:
        print(json.dumps(summary.as_dict(), indent=2))
        return 0
    render(summary, console)
    if args.task == "segment" and args.architecture == "dynamic_unet":
        other_cap = DEFAULT_DECODER_CAP if args.decoder_width is None else None
        other = DynamicUnet(model.body, args.classes, decoder_width=other_cap)
        total = sum(p.numel() for p in other.parameters())
        label = f"capped at {other_cap}" if other_cap else "uncapped (fastai's widths)"
        console.print(
            f"The same U-Net with decoder widths {label}: {total:,} parameters "
            f"(this one: {summary.total:,})."
        )
    return 0
