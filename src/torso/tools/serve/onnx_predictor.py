"""`OnnxPredictor`: a run's model exported to ONNX (`torso export RUN --format onnx`), run by
onnxruntime in place of PyTorch.

It is what a `Predictor` is to the task's prediction code (`config`, `task`, `activations`):
images are prepared as validation prepares them (`torso.data.prepare.prepare_images`), the
graph's outputs become activations through `Task.export_activation`, and the task decodes
them (`Task.serve_records`, `Task.predict_records`) exactly as it decodes PyTorch's, so both
give the same records up to the export's own numerical difference.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torso.config import RunConfig
from torso.errors import TorsoError
from torso.tasks.base import Task


class OnnxPredictor:
    """An exported model with the run's config and task: `activations` and `predict`.

    Args:
        path: the `.onnx` file of `torso export`.
        config: the run's `RunConfig` (its `torso.json`): classes, size, channels, resize.
        task: the run's task (`torso.tasks.get_task(config.task, **config.task_options)`).

    A file onnxruntime cannot load, or a graph whose inputs do not fit the run (their number,
    channels or image size), is a `TorsoError` naming the file. A graph exported for batches
    of one (the default of `torso export`) is run one sample at a time.
    """

    backend = "onnxruntime"

    def __init__(self, path: str | os.PathLike, config: RunConfig, task: Task) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise TorsoError(
                "--onnx needs onnxruntime: pip install onnxruntime (or torso[dev])"
            ) from None
        self.path = Path(path)
        self.config = config
        self.task = task
        if not self.path.is_file():
            raise TorsoError(f"--onnx '{self.path}': no such file")
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only: the warnings are about graph optimisation
        try:
            self.session = onnxruntime.InferenceSession(
                str(self.path), options, providers=["CPUExecutionProvider"]
            )
        except runtime_errors() as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            raise TorsoError(
                f"--onnx '{self.path}': onnxruntime cannot load it ({first})"
            ) from None
        self.input_names = [item.name for item in self.session.get_inputs()]
        self.batch_size_limit = self._check_inputs()

    def __repr__(self) -> str:
        return f"OnnxPredictor({self.config.task}, {self.config.backbone}, {self.path})"

    def _check_inputs(self) -> int | None:
        """The graph's fixed batch size (None when free), after checking that its inputs are
        the task's, with the run's channels and size."""
        inputs = self.session.get_inputs()
        expected = len(self.task.input_names)
        if len(inputs) != expected:
            raise TorsoError(
                f"--onnx '{self.path}' takes {len(inputs)} input(s); a {self.config.task} run's "
                f"model takes {expected}: was it exported from this run?"
            )
        batch: int | None = None
        for item in inputs:
            shape = list(item.shape)
            if len(shape) != 4:
                raise TorsoError(f"--onnx '{self.path}': input {item.name} is not (N, C, H, W)")
            fixed = [side if isinstance(side, int) else None for side in shape]
            if fixed[1] is not None and fixed[1] != self.config.in_channels:
                raise TorsoError(
                    f"--onnx '{self.path}' takes {fixed[1]}-channel images; the run's model "
                    f"reads {self.config.in_channels}"
                )
            size = tuple(fixed[2:])
            if None not in size and size != self.config.size:
                raise TorsoError(
                    f"--onnx '{self.path}' takes {size[0]}x{size[1]} images; the run was "
                    f"trained at {self.config.height}x{self.config.width}: export it at that size"
                )
            batch = fixed[0]
        return batch

    def activations(self, images: Any, *, tta: bool = False, batch_size: int = 32) -> torch.Tensor:
        """The task's activations for `images`, as `Predictor.activations` gives them."""
        from torso.data.prepare import prepare_images

        if tta:
            raise TorsoError("test-time augmentation needs the PyTorch model, not ONNX")
        if batch_size < 1:
            raise TorsoError(f"batch_size must be at least 1, got {batch_size}")
        batch = prepare_images(self.config, images)
        group = self.task.images_per_sample
        if len(batch) % group:
            raise TorsoError(
                f"a {self.config.task} model takes images {group} at a time; got {len(batch)}"
            )
        samples = batch.reshape(len(batch) // group, group, *batch.shape[1:]).numpy()
        step = self.batch_size_limit or batch_size
        results = []
        for start in range(0, len(samples), step):
            chunk = samples[start : start + step]
            feeds = {
                name: np.ascontiguousarray(chunk[:, index])
                for index, name in enumerate(self.input_names)
            }
            outputs = torch.from_numpy(self.session.run(None, feeds)[0])
            results.append(self.task.export_activation(outputs))
        return torch.cat(results)

    def predict(self, images: Any, *, batch_size: int = 32) -> list[dict]:
        """One record per sample, as `Predictor.predict` gives them."""
        return self.task.predict_records(self, images, batch_size=batch_size)


def runtime_errors() -> tuple[type[Exception], ...]:
    """onnxruntime's own exception classes (they share no base class but `Exception`): what it
    raises for a file or graph it cannot load or run."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    found = (getattr(state, name) for name in dir(state))
    return tuple(item for item in found if isinstance(item, type) and issubclass(item, Exception))
