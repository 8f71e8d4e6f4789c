"""`ServedModel`: the run a server answers with: its model (PyTorch, or the ONNX export through
onnxruntime), what the page shows of it (`metadata`), and the answer to a batch of images.

An answer is the task's records (`Task.serve_records`: what `Predictor.predict` gives, made
JSON-able), one per sample; with `explain`, each record of a model that has class activation
maps also gets `"heatmap"`: Grad-CAM of its predicted class (`Predictor.explain`) as a PNG at
the model's input size, with the region of the image that input covers.
"""

from __future__ import annotations

import base64
import csv
import io
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torso.errors import NotExplainableError, TorsoError

#: Columns of `metrics.csv` that are not validation results.
NOT_VALIDATION = ("train_loss", "lr", "time")


class ServedModel:
    """A run folder's model, ready to answer.

    Args:
        run: the run folder (or its `best/`) with `torso.json` (and `model.safetensors` unless
            `onnx` is given).
        onnx: an ONNX export of that run's model (`torso export RUN --format onnx`) to run
            through onnxruntime instead of PyTorch; heatmaps then are not available.
        device: where the PyTorch model runs (default: the CPU).
        batch_size: the most samples given to the model at once.
    """

    def __init__(
        self,
        run: str | os.PathLike,
        *,
        onnx: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        batch_size: int = 32,
    ) -> None:
        from torso.checkpoint import read_config
        from torso.predictor import load
        from torso.tasks import get_task

        self.folder = Path(run)
        if not self.folder.is_dir():
            raise TorsoError(f"'{self.folder}' is not a run folder (a folder with torso.json)")
        self.batch_size = batch_size
        self.explain_error: str | None = None
        if onnx is None:
            self.predictor: Any = load(self.folder, device=device)
            self.backend = "pytorch"
        else:
            from torso.tools.serve.onnx_predictor import OnnxPredictor

            config = read_config(self.folder)
            task = get_task(config.task, **config.task_options)
            self.predictor = OnnxPredictor(onnx, config, task)
            self.backend = "onnxruntime"
            self.explain_error = (
                "heatmaps need the PyTorch model: this server runs the ONNX export "
                "(serve without --onnx to see them)"
            )
        self.config = self.predictor.config
        self.task = self.predictor.task
        if self.explain_error is None and not has_activation_maps(self.task):
            self.explain_error = f"a {self.config.task} model has no class activation map"

    @property
    def images_per_sample(self) -> int:
        return self.task.images_per_sample

    def metadata(self) -> dict[str, Any]:
        """What `/metadata` and the page show: the run's name, task, backbone, classes, input,
        how the page draws an answer (`view`), the backend, whether heatmaps are available,
        the validation metrics and the whole run config."""
        config = self.config
        return {
            "name": run_name(self.folder),
            "task": config.task,
            "backbone": config.backbone,
            "classes": config.class_names(),
            "size": list(config.size),
            "in_channels": config.in_channels,
            "resize": config.resize,
            "images_per_sample": self.images_per_sample,
            "view": self.task.serve_view,
            "backend": self.backend,
            "heatmaps": self.explain_error is None,
            "heatmap_error": self.explain_error,
            "metrics": validation_metrics(self.folder, self.task),
            "config": config.to_dict(),
        }

    def answer(self, images: list[torch.Tensor], explain: bool = False) -> list[dict[str, Any]]:
        """One JSON-able record per sample of `images` (decoded uint8 `(C, H, W)`,
        `images_per_sample` per sample). With `explain`, each record also gets `"heatmap"`
        (see `heatmap_record`), or `"heatmap_error"` saying why there is none."""
        records = self.task.serve_records(self.predictor, images, batch_size=self.batch_size)
        if not explain:
            return records
        maps = None
        error = self.explain_error
        if error is None:
            try:
                maps = self.predictor.explain(images, batch_size=self.batch_size)
            except NotExplainableError as refused:
                error = self.explain_error = str(refused)  # the same for every image
            except TorsoError as failed:
                error = str(failed)
        if maps is None:
            return [{**record, "heatmap_error": error} for record in records]
        size = self.config.size[0]
        for record, image, heatmap in zip(records, images, maps, strict=True):
            record["heatmap"] = heatmap_record(heatmap, image, size, self.config.resize)
        return records


def has_activation_maps(task: Any) -> bool:
    """Whether `task` defines class activation maps (`Task.activation_maps`, which
    `Predictor.explain` calls); the base class's refuses."""
    from torso.tasks.base import Task

    return type(task).activation_maps is not Task.activation_maps


def heatmap_record(
    heatmap: torch.Tensor, image: torch.Tensor, size: int, resize: str
) -> dict[str, Any]:
    """A heatmap `(S, S)` in [0, 1] at the model's input size as JSON: `{"encoding": "png",
    "width", "height", "data": base64 of an 8-bit grey PNG (0..255 for 0..1), "region":
    [left, top, right, bottom]}`, the region being where the model's input lies over `image`
    `(C, H, W)`, in its pixels (`torso.data.transforms.input_region`): draw the heatmap
    stretched over that rectangle."""
    from PIL import Image

    from torso.data.transforms import input_region

    values = (heatmap.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(values), mode="L").save(buffer, "PNG")
    height, width = image.shape[-2:]
    region = input_region(int(height), int(width), size, resize)
    return {
        "encoding": "png",
        "width": int(values.shape[1]),
        "height": int(values.shape[0]),
        "data": base64.b64encode(buffer.getvalue()).decode("ascii"),
        "region": [round(value, 2) for value in region],
    }


def run_name(folder: Path) -> str:
    """A run's name for people: its folder's name (`pets`, or `pets/best` for a best model)."""
    resolved = folder.resolve()
    if resolved.name == "best" and resolved.parent.name:
        return f"{resolved.parent.name}/best"
    return resolved.name


def validation_metrics(folder: Path, task: Any) -> dict[str, Any] | None:
    """The validation results of the epoch whose weights are served, from `metrics.csv`: the
    last epoch's for a run folder, the best epoch's (by the task's main metric) for its
    `best/`. `{"epoch": n, "valid_loss": ..., <metric>: ...}`; None without a `metrics.csv`."""
    best = False
    path = folder / "metrics.csv"
    if not path.is_file() and (folder.parent / "metrics.csv").is_file():
        path, best = folder.parent / "metrics.csv", True
    try:
        rows = list(csv.DictReader(path.open(newline="")))
    except (OSError, csv.Error, UnicodeDecodeError):
        return None
    parsed = [_numbers(row) for row in rows]
    parsed = [row for row in parsed if "epoch" in row]
    if not parsed:
        return None
    chosen = parsed[-1]
    main_metric = task.main_metric
    if best:
        scored = [row for row in parsed if not math.isnan(row.get(main_metric, math.nan))]
        if scored:
            sign = 1 if task.higher_is_better else -1
            chosen = max(scored, key=lambda row: sign * row[main_metric])
    metrics = {key: value for key, value in chosen.items() if key not in NOT_VALIDATION}
    metrics["epoch"] = int(metrics["epoch"])
    return metrics


def _numbers(row: dict[str, str]) -> dict[str, float]:
    """A CSV row's numeric fields (JSON has no NaN: empty or NaN fields are left out)."""
    numbers = {}
    for key, text in row.items():
        try:
            value = float(text)
        except (TypeError, ValueError):
            continue
        if math.isfinite(value):
            numbers[key] = value
    return numbers
