"""`torso serve RUN`: the run's model behind an HTTP API, with a page to try it in a browser.

Needs the `serve` extra (Starlette, uvicorn, python-multipart): `pip install torso[serve]`.
"""

from __future__ import annotations

import argparse

from torso.numbers import non_negative_int, positive_float, positive_int

#: The command's line in `torso --help`.
HELP = "serve a trained model over HTTP, with a page to try it"
#: What the `serve` extra installs (their import names).
SERVE_PACKAGES = ("starlette", "uvicorn", "multipart", "python_multipart", "anyio")


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "serve",
        help=HELP,
        description=(
            "Serve the model saved in RUN (a run folder of `torso train`, or its best/ folder): "
            "a page at / to drop images on and see the answer drawn, and a JSON API: "
            "POST /predict (images as multipart files or the raw body; ?explain=1 adds "
            "heatmaps), GET /health, GET /metadata. Listens on 127.0.0.1 (this machine only) "
            "unless --host says otherwise. Example: torso serve runs/demo-classify"
        ),
    )
    parser.add_argument("run", help="folder with torso.json and model.safetensors")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument(
        "--port", type=non_negative_int, default=8000, help="port (8000; 0: any free port)"
    )
    parser.add_argument(
        "--onnx",
        metavar="MODEL.onnx",
        help="answer with this ONNX export of the run's model (`torso export RUN`) through "
        "onnxruntime instead of PyTorch (no heatmaps)",
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:1, mps ... (default cpu)")
    parser.add_argument(
        "--max-upload-mb",
        type=positive_float,
        default=20.0,
        help="largest request body in MB; larger ones get 413 (20)",
    )
    parser.add_argument(
        "--max-images", type=positive_int, default=32, help="most images in one request (32)"
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=32,
        help="most samples the model runs at once; requests waiting together share a batch (32)",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    from torso.errors import TorsoError

    try:
        from torso.tools.serve import ServedModel, create_app, listen, serve
        from torso.tools.serve.server import address_of
    except ImportError as error:
        if (error.name or "").split(".")[0] not in SERVE_PACKAGES:
            raise
        raise TorsoError(
            f"torso serve needs the serve extra ({error.name} is missing): "
            "pip install 'torso[serve]'"
        ) from None
    from torso.predictor import choose_device

    if args.onnx is not None and args.device is not None:
        raise TorsoError("--device: an --onnx model runs on the CPU through onnxruntime")
    device = choose_device(args.device, "--device") if args.device else None
    model = ServedModel(args.run, onnx=args.onnx, device=device, batch_size=args.batch_size)
    app = create_app(model, max_upload_mb=args.max_upload_mb, max_images=args.max_images)
    sock = listen(args.host, args.port)
    print(
        f"serving {model.folder} ({model.config.task}, {model.config.backbone}, "
        f"{model.backend}) at {address_of(sock)}/ (Ctrl-C stops)",
        flush=True,
    )
    try:
        serve(app, sock=sock)
    except KeyboardInterrupt:  # Ctrl-C: how a server is stopped, after its requests finish
        print("stopped", flush=True)
    return 0
