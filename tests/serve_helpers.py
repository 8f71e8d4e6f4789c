"""What the `torso serve` tests share: tiny saved runs (random weights), images as file bytes,
a real uvicorn server on a free port of 127.0.0.1 in a thread, and a Fashion-MNIST image."""

from __future__ import annotations

import contextlib
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from torso.checkpoint import save_model
from torso.config import RunConfig
from torso.registry import get_task

#: Classes of the small classification runs.
CLASSES = ["circle", "square", "triangle"]


def saved_run(
    folder: Path,
    task_name: str = "classify",
    classes: list[str] = CLASSES,
    size: int = 32,
    **options,
) -> Path:
    """A run folder (torso.json + model.safetensors) of `test_resnet` with seeded random
    weights; `options` are the task's, or `in_channels` / `resize` of the config."""
    fields = {key: options.pop(key) for key in ("in_channels", "resize") if key in options}
    task = get_task(task_name, **options)
    config = RunConfig(
        task_name,
        "test_resnet",
        len(classes),
        size,
        classes=classes,
        task_options=task.options,
        **fields,
    )
    torch.manual_seed(0)
    save_model(task.build_model(config).eval(), config, folder)
    return folder


def image_bytes(seed: int, width: int = 60, height: int = 40, format: str = "PNG") -> bytes:
    """A random RGB image as the bytes of an image file."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=format)
    return buffer.getvalue()


def decoded(data: bytes) -> torch.Tensor:
    """The bytes of an RGB image file as uint8 `(3, H, W)`, decoded by PIL alone."""
    array = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return torch.from_numpy(array.transpose(2, 0, 1).copy())


def fashion_image(path: Path, index: int = 0) -> tuple[Path, str]:
    """The `index`-th validation image of torso's Fashion-MNIST subset, written to `path` as
    the 28x28 grey PNG `torso demo` writes, and its true class."""
    from torso.data.demo import FASHION_CLASSES, _asset

    data = _asset("fashion_mnist.npz")
    Image.fromarray(data["valid_images"][index], mode="L").save(path)
    return path, FASHION_CLASSES[int(data["valid_labels"][index])]


@contextlib.contextmanager
def running_server(app) -> Iterator[str]:
    """`app` served by uvicorn on a free port of 127.0.0.1, in a thread: yields its base URL
    (`http://127.0.0.1:PORT`), and stops the server on leaving."""
    import uvicorn

    from torso.tools.serve import address_of, listen

    sock = listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield address_of(sock)
    finally:
        server.should_exit = True
        thread.join(30)
