"""Export a saved model to ONNX or TorchScript, checked against PyTorch before it is kept.

The exported graph takes what the PyTorch model takes: float32 images `(N, C, H, W)` with values
in [0, 1]. Normalisation with the body's mean and std is part of the model, so a consumer only
scales pixels to [0, 1]. Next to the exported file goes a JSON description (classes, input
size, channels, stats, task, what the output means, the measured difference from PyTorch), e.g.
`model.onnx` + `model.json`.

    result = export_run("runs/pets", format="onnx")    # runs/pets/model.onnx + model.json
    print(result.max_abs_diff)                         # e.g. 4.8e-07

Every export is run once on random inputs (onnxruntime for ONNX, `torch.jit.load` for
TorchScript) and its outputs compared with the PyTorch model's; a difference above `tolerance`
raises `TorsoError` and nothing is written.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torso.checkpoint import load_model
from torso.config import RunConfig, as_run_config
from torso.errors import TorsoError
from torso.files import atomic_write
from torso.tasks import get_task

#: Format name → default file name in the run folder.
FORMATS = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt"}
TOLERANCE = 1e-4
ONNX_OPSET = 17
#: What the exporters raise for a model they cannot convert: torch's own errors (unsupported
#: operators, data-dependent control flow) are RuntimeErrors, TypeErrors or ValueErrors;
#: `torch.jit.Error` is none of them. Anything else (a MemoryError, a bug) is not caught.
EXPORT_ERRORS: tuple[type[BaseException], ...] = (
    RuntimeError,
    TypeError,
    ValueError,
    AssertionError,
    torch.jit.Error,
)


class ExportMismatchError(TorsoError):
    """The exported model's outputs differ from PyTorch's by more than the tolerance."""

    exit_code = 1


@dataclass(frozen=True)
class ExportResult:
    """What `export_model` wrote and measured.

    `path`: the exported model; `description`: its JSON sidecar; `max_abs_diff`: the largest
    absolute difference between its outputs and PyTorch's over the checked inputs (None when
    not verified); `checked_shapes`: the input shapes it was run on.
    """

    path: Path
    description: Path
    format: str
    max_abs_diff: float | None
    checked_shapes: list[tuple[int, ...]]


def input_names(config: RunConfig) -> list[str]:
    """Names of the graph's inputs, from the task: `["images"]`, or `["images_a", "images_b"]`
    for pairs."""
    return list(_task(config).input_names)


def _task(config: RunConfig):
    return get_task(config.task, **config.task_options)


def _runtime_errors() -> tuple[type[BaseException], ...]:
    """The exceptions onnxruntime raises when it cannot run a model (its own classes)."""
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as state
    except ImportError:
        return ()
    names = ("Fail", "InvalidArgument", "RuntimeException", "InvalidGraph", "NotImplemented")
    return tuple(getattr(state, name) for name in names if hasattr(state, name))


def image_size(config: RunConfig, size: int | tuple[int, int] | None) -> tuple[int, int]:
    """`(height, width)` of the export's example input: `size` if given, else the trained size."""
    chosen = size if size is not None else config.size
    if isinstance(chosen, int):
        chosen = (chosen, chosen)
    height, width = (int(side) for side in chosen)
    if height < 1 or width < 1:
        raise TorsoError(f"--size must be positive, got {height}x{width}")
    return height, width


def _random_inputs(names: list[str], shape: tuple[int, ...], seed: int) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.rand(shape, generator=generator) for _ in names)


def _check_shapes(
    shape: tuple[int, int, int, int], dynamic: bool
) -> list[tuple[int, int, int, int]]:
    """The input shapes an export is verified on: the example's own (with fresh values), and
    for a dynamic export a batch of 2 and a larger image too."""
    batch, channels, height, width = shape
    if not dynamic:
        return [shape]
    return [shape, (2, channels, height, width), (1, channels, height + 32, width + 32)]


@contextlib.contextmanager
def _quiet_tracing() -> Iterator[None]:
    # Tracing warns about every shape test in Python code, and the TorchScript-based tools
    # about their deprecation: noise for someone exporting a model; the check below is what counts.
    with warnings.catch_warnings():
        for category in (torch.jit.TracerWarning, DeprecationWarning, FutureWarning):
            warnings.simplefilter("ignore", category)
        yield


def _to_onnx(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], names: list[str], dynamic: bool
) -> bytes:
    axes: dict[str, dict[int, str]] | None = None
    if dynamic:
        axes = {name: {0: "batch", 2: "height", 3: "width"} for name in names}
        axes["outputs"] = {0: "batch"}
    buffer = io.BytesIO()
    try:
        # The TorchScript-based exporter: the torch.export-based one needs onnxscript.
        with _quiet_tracing():
            torch.onnx.export(
                model,
                inputs,
                buffer,
                dynamo=False,
                input_names=names,
                output_names=["outputs"],
                dynamic_axes=axes,
                opset_version=ONNX_OPSET,
            )
    except EXPORT_ERRORS as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TorsoError(f"ONNX export failed for this model: {first}") from error
    return buffer.getvalue()


def _to_torchscript(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> bytes:
    buffer = io.BytesIO()
    try:
        with _quiet_tracing():
            traced = torch.jit.trace(model, inputs, check_trace=False)
            torch.jit.save(traced, buffer)
    except EXPORT_ERRORS as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TorsoError(
            f"TorchScript tracing (torch.jit.trace) failed for this model: {first}; "
            "export it with --format onnx instead"
        ) from error
    return buffer.getvalue()


def _runner(format: str, data: bytes, names: list[str]):
    """A function running the exported model on a tuple of tensors, returning a tensor."""
    if format == "onnx":
        try:
            import onnxruntime
        except ImportError:
            raise TorsoError(
                "checking an ONNX export needs onnxruntime (pip install onnxruntime), "
                "or skip the check with --no-verify"
            ) from None
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 4  # failures are reported by the check itself
        session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])

        def run(inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
            feeds = {name: value.numpy() for name, value in zip(names, inputs, strict=True)}
            return torch.from_numpy(session.run(None, feeds)[0])

        return run
    with _quiet_tracing():
        loaded = torch.jit.load(io.BytesIO(data), map_location="cpu").eval()

    def run(inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        with torch.no_grad():
            return loaded(*inputs)

    return run


def _verify(
    model: nn.Module,
    config: RunConfig,
    format: str,
    data: bytes,
    names: list[str],
    shapes: list[tuple[int, ...]],
    image: torch.Tensor | None = None,
) -> tuple[float, list[tuple[int, ...]]]:
    run = _runner(format, data, names)
    task = _task(config)
    largest, checked = 0.0, []
    for seed, shape in enumerate(shapes, start=1):
        if seed == 1 and image is not None:
            inputs = (image,) * len(names)  # a real image, as validation prepares it
        else:
            inputs = _random_inputs(names, shape, seed)
        try:
            with torch.no_grad():
                expected = model(*inputs).float()
        except (RuntimeError, ValueError, AssertionError, TorsoError):
            if seed == 1:
                raise
            continue  # the PyTorch model itself does not take this extra size: nothing to compare
        try:
            produced = run(inputs).float()
        except (*EXPORT_ERRORS, *_runtime_errors()) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            hint = "; export without --dynamic for a fixed input shape" if seed > 1 else ""
            raise ExportMismatchError(
                f"the exported {format} model fails on an input of shape {shape}: {reason}{hint}"
            ) from error
        if produced.shape != expected.shape:
            raise ExportMismatchError(
                f"the exported {format} model gives outputs of shape {tuple(produced.shape)} for "
                f"an input of shape {shape}; PyTorch gives {tuple(expected.shape)}"
            )
        largest = max(largest, task.export_difference(expected, produced))
        checked.append(shape)
    return largest, checked


def describe_export(
    config: RunConfig,
    format: str,
    shape: tuple[int, ...],
    *,
    dynamic: bool,
    max_abs_diff: float | None,
    file_name: str,
) -> dict[str, Any]:
    """The JSON sidecar: what to feed the exported model and what comes out."""
    from torso.version import __version__

    task = _task(config)
    description: dict[str, Any] = {
        "format": format,
        "file": file_name,
        "task": config.task,
        "backbone": config.backbone,
        "classes": list(config.classes) if config.classes is not None else None,
        "num_outputs": config.num_outputs,
        "inputs": list(task.input_names),
        "input_shape": list(shape),
        "input_range": [0.0, 1.0],
        "input_dtype": "float32",
        "size": list(shape[-2:]),
        "in_channels": shape[1],
        "resize": config.resize,
        "stats": [list(part) for part in config.stats] if config.stats is not None else None,
        "normalisation": "inside the model: feed pixels scaled to [0, 1], not normalised",
        "outputs": "outputs",
        "output_meaning": task.output_meaning,
        "activation": task.output_activation,
        "dynamic": dynamic,
        "max_abs_diff": max_abs_diff,
        "torso_version": __version__,
    }
    if format == "onnx":
        description["opset"] = ONNX_OPSET
    description.update(task.export_details(config))
    return description


def export_model(
    model: nn.Module,
    config: RunConfig | dict[str, Any],
    path: str | os.PathLike,
    *,
    format: str = "onnx",
    size: int | tuple[int, int] | None = None,
    dynamic: bool = False,
    verify: bool = True,
    tolerance: float = TOLERANCE,
    check_image: Any = None,
) -> ExportResult:
    """Export `model` (described by its run config, or `torso.json`'s dict) to `path` and
    check it.

    The example input is `(1, in_channels, H, W)` float32 in [0, 1], `(H, W)` from `size` or the
    trained size. `dynamic` (ONNX) leaves the batch, height and width free; it is then also
    checked at batch 2 and at a 32-pixel larger size. With `verify`, the export is run on random
    inputs and compared with `model`; a largest absolute difference above `tolerance` raises
    `ExportMismatchError` and nothing is written. `check_image` (a path, PIL image, array or
    tensor) replaces the first random input by that image prepared as validation prepares it
    (`torso.data.prepare.prepare_images`; the export must then have the trained size). The JSON
    description goes to `path` with the suffix `.json`.
    """
    if format not in FORMATS:
        raise TorsoError(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    config = as_run_config(config, where="the model's config")
    path = Path(path)
    description_path = path.with_suffix(".json")
    if description_path == path:
        raise TorsoError(f"'{path}': the export needs a name that does not end in .json")
    task = _task(config)
    if dynamic and not task.exports_dynamic:
        raise TorsoError(
            f"--dynamic: a {config.task} model is exported for one input shape (its "
            "post-processing is traced at that batch and size); export without --dynamic"
        )
    model = task.export_module(model).eval().cpu().float()
    names = input_names(config)
    height, width = image_size(config, size)
    shape = (1, config.in_channels, height, width)
    image = None
    if check_image is not None:
        from torso.data.prepare import prepare_images

        if (height, width) != config.size:
            raise TorsoError(
                f"a check image is prepared at the trained size {config.height}x{config.width}; "
                f"this export is {height}x{width}"
            )
        image = prepare_images(config, check_image)[:1]
    example = _random_inputs(names, shape, seed=0)
    try:
        with torch.no_grad():
            model(*example)
    except TorsoError as error:
        raise TorsoError(f"the model cannot take a {height}x{width} input: {error}") from None
    if format == "onnx":
        data = _to_onnx(model, example, names, dynamic)
    else:
        data = _to_torchscript(model, example)
    difference, checked = None, []
    if verify:
        difference, checked = _verify(
            model, config, format, data, names, _check_shapes(shape, dynamic), image
        )
        if difference > tolerance:
            raise ExportMismatchError(
                f"the exported {format} model's outputs differ from PyTorch's by up to "
                f"{difference:.3g} (tolerance {tolerance:g}); nothing written"
            )
    atomic_write(path, data)
    description = describe_export(
        config,
        format,
        shape,
        dynamic=dynamic,
        max_abs_diff=difference,
        file_name=path.name,
    )
    atomic_write(description_path, json.dumps(description, indent=2) + "\n")
    return ExportResult(path, description_path, format, difference, checked)


def export_run(
    run: str | os.PathLike,
    *,
    format: str = "onnx",
    out: str | os.PathLike | None = None,
    size: int | tuple[int, int] | None = None,
    dynamic: bool = False,
    verify: bool = True,
    tolerance: float = TOLERANCE,
    check_image: Any = None,
) -> ExportResult:
    """Export the model saved in `run` (a folder with `torso.json` + `model.safetensors`).

    `out` defaults to `run/model.onnx` or `run/model.torchscript.pt`. See `export_model`.
    """
    if format not in FORMATS:
        raise TorsoError(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    model, config = load_model(run)
    folder = Path(run)
    if folder.is_file():
        folder = folder.parent
    target = Path(out) if out is not None else folder / FORMATS[format]
    return export_model(
        model,
        config,
        target,
        format=format,
        size=size,
        dynamic=dynamic,
        verify=verify,
        tolerance=tolerance,
        check_image=check_image,
    )
