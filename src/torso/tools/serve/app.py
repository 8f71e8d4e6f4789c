"""The HTTP application of `torso serve` (Starlette): the page, `/predict`, `/health`,
`/metadata`.

- `GET /`: the page (`page.html`, one file, nothing fetched from elsewhere).
- `POST /predict`: images as multipart file parts (any field names, in order; several files
  make a batch) or one image as the raw request body. Answer: `{"predictions": [record, ...]}`,
  one record per image (per pair for a pair model), as `Predictor.predict` gives them, made
  JSON-able by the task (`Task.serve_records`). `?explain=1` adds each record's heatmap.
- `GET /health`: `{"status": "ok", "backend": ..., "waiting": requests queued}`.
- `GET /metadata`: the run (`ServedModel.metadata`) and the server's limits.

Every refusal is a status 4xx (503 when the queue is full) and one line of JSON,
`{"error": "..."}`: a body over `max_upload_mb` (413, from its Content-Length or while it is
read), an empty body, a file that is not an image or is truncated, too many images, a number
of images that does not make whole pairs. Decoding runs in a thread pool and the model on its
own thread (`ModelWorker`), so the event loop always answers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path

import torch
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive

from torso.errors import TorsoError
from torso.tools.serve.model import ServedModel
from torso.tools.serve.worker import ModelWorker, WorkerBusy

#: Defaults of `torso serve`'s limits.
MAX_UPLOAD_MB = 20.0
MAX_IMAGES = 32
MAX_WAITING = 64


class RequestError(Exception):
    """A request the server refuses: its status and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_response(status: int, message: str) -> JSONResponse:
    """`{"error": message}` on one line, with `status`."""
    line = " ".join(str(message).split())
    return JSONResponse({"error": line}, status_code=status)


def page_html() -> str:
    """The page's HTML (`page.html`, shipped with torso)."""
    return (resources.files("torso.tools.serve") / "page.html").read_text(encoding="utf-8")


def create_app(
    model: ServedModel,
    *,
    max_upload_mb: float = MAX_UPLOAD_MB,
    max_images: int = MAX_IMAGES,
    max_waiting: int = MAX_WAITING,
) -> Starlette:
    """The Starlette application serving `model`.

    max_upload_mb: the largest request body, in megabytes (10**6 bytes); larger is refused
        with 413. max_images: the most images in one request. max_waiting: the most requests
        queued for the model; more get 503.
    The model's thread is stopped when the application shuts down (its lifespan).
    """
    limit = int(max_upload_mb * 1_000_000)
    worker = ModelWorker(
        model.answer,
        images_per_sample=model.images_per_sample,
        max_batch=model.batch_size * model.images_per_sample,
        max_waiting=max_waiting,
    )
    html = page_html()
    limits = {"max_upload_mb": max_upload_mb, "max_images": max_images}

    async def page(request: Request) -> Response:
        return HTMLResponse(html)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "backend": model.backend, "waiting": worker.waiting})

    async def metadata(request: Request) -> Response:
        return JSONResponse({**model.metadata(), "limits": limits})

    async def predict(request: Request) -> Response:
        try:
            explain = flag(request.query_params.get("explain", "0"), "explain")
            uploads = await read_uploads(request, limit, max_images)
            count, group = len(uploads), model.images_per_sample
            if count % group:
                raise RequestError(
                    400,
                    f"a {model.config.task} model compares images {group} at a time: send "
                    f"{group} images (or a multiple), got {count}",
                )
            images = await run_in_threadpool(decode_uploads, uploads, model.config.in_channels)
            future = worker.submit(images, explain)
            records = await asyncio.wrap_future(future)
        except RequestError as error:
            return error_response(error.status, error.message)
        except WorkerBusy as error:
            return error_response(503, str(error))
        except TorsoError as error:
            return error_response(400, str(error))
        return JSONResponse({"predictions": records})

    async def http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        return error_response(error.status_code, error.detail)

    async def server_error(request: Request, error: Exception) -> Response:
        return error_response(500, f"internal error ({type(error).__name__}); see the log")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await run_in_threadpool(worker.close)

    app = Starlette(
        routes=[
            Route("/", page),
            Route("/health", health),
            Route("/metadata", metadata),
            Route("/predict", predict, methods=["POST"]),
        ],
        exception_handlers={HTTPException: http_error, 500: server_error},
        lifespan=lifespan,
    )
    app.state.worker = worker
    app.state.model = model
    return app


def flag(text: str, name: str) -> bool:
    """A query flag: 1/true/yes/on, or 0/false/no/off (or nothing)."""
    word = text.strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off", ""):
        return False
    raise RequestError(400, f"?{name}= takes 1 or 0, got {text!r}")


async def read_uploads(request: Request, limit: int, max_images: int) -> list[tuple[str, bytes]]:
    """The request's images as `(name, bytes)`: each file part of a multipart body, in order,
    or the whole body as one image. Refuses (`RequestError`) a body over `limit` bytes (413),
    an empty one, and more than `max_images` files."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise RequestError(400, f"Content-Length {declared!r} is not a number") from None
        if size > limit:
            raise too_large(limit)
    limited = Request(request.scope, limited_receive(request.receive, limit))
    content_type = request.headers.get("content-type", "")
    try:
        if content_type.split(";")[0].strip().lower() == "multipart/form-data":
            return await read_files(limited, max_images)
        body = await limited.body()
    except BodyTooLarge:
        raise too_large(limit) from None
    if not body:
        raise RequestError(
            400, "empty request: send an image as the body, or as multipart file parts"
        )
    return [("the request body", body)]


async def read_files(request: Request, max_images: int) -> list[tuple[str, bytes]]:
    """The file parts of a multipart request, in order, as `(file name, bytes)`."""
    async with request.form(max_files=max_images, max_fields=max_images) as form:
        files = [item for _, item in form.multi_items() if isinstance(item, UploadFile)]
        if not files:
            raise RequestError(
                400,
                "the multipart request has no file part: send each image as a file "
                "(curl -F image=@photo.jpg)",
            )
        uploads = []
        for index, upload in enumerate(files, start=1):
            uploads.append((upload.filename or f"file {index}", await upload.read()))
    return uploads


class BodyTooLarge(Exception):
    """Raised by `limited_receive` when a body grows over its limit."""


def too_large(limit: int) -> RequestError:
    limit_mb = f"{limit / 1e6:g} MB"
    return RequestError(413, f"the request is larger than the server's limit of {limit_mb}")


def limited_receive(receive: Receive, limit: int) -> Receive:
    """`receive` that counts the body's bytes and raises `BodyTooLarge` past `limit` (a
    client may send more than its Content-Length says, or none at all)."""
    received = 0

    async def counted() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge
        return message

    return counted


def decode_uploads(uploads: list[tuple[str, bytes]], in_channels: int) -> list[torch.Tensor]:
    """Each upload decoded as torso decodes image files (`torso.data.decode`): uint8
    `(in_channels, H, W)`. A file that is not a readable image is a `TorsoError` naming it."""
    from torso.data.decode import converted, decode_image, image_to_tensor

    images = []
    for name, data in uploads:
        path = Path(name)
        decoded = decode_image(path, data=data)
        images.append(image_to_tensor(converted(decoded.image, in_channels, path)))
    return images
