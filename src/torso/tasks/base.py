"""What every task owns: its options, model, loss, metrics, decoding and what prediction writes.

A task is a small object made by `torso.tasks.get_task(name, **options)`. Its `options` are plain
JSON values; they are saved in `torso.json` so that a checkpoint rebuilds the same task. The
Learner, the Predictor, `torso predict`, the report and export only ever call the methods below,
so a new task (segmentation, Siamese pairs) is one new module with one class, and no other code
compares task names.

A task module imports torch, torchmetrics, matplotlib and the models inside the functions that
use them, never at its top: `torso train --help` imports every task module to list their
options, and must not wait for torch (`tests/test_cli_startup.py` holds that line).
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torso.config import RunConfig, as_run_config
from torso.errors import NotExplainableError, TorsoError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn
    from torchmetrics import Metric

    from torso.predictor import Predictor


@dataclass(frozen=True)
class TaskOption:
    """One option of a task, as data: `torso train` and `torso lr-find` add it to their
    command line (`--label-smoothing` for `name="label_smoothing"`) and pass its value to the
    task's constructor.

    `type` parses the command-line text (`bool`: a flag without value); `nargs`, when given,
    is how many values the option takes (they reach the task as a tuple).
    """

    name: str
    type: Callable[[str], Any]
    default: Any = None
    help: str = ""
    choices: tuple[Any, ...] | None = None
    nargs: int | None = None
    metavar: tuple[str, ...] | str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclass
class ReportParts:
    """What a task adds to a run's report (and its model card): `figures`, the PNG files it
    wrote, and `tables`, title → rows (each row a dict column → value), e.g.
    `{"per class": [{"class": "cat", "precision": 0.9, ...}, ...]}`."""

    figures: list[Path] = field(default_factory=list)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def output_names(config: RunConfig | Mapping[str, Any]) -> tuple[int, list[str]]:
    """The number of outputs and their names (`"0"`, `"1"`, ... when unnamed), from a
    `RunConfig` or a `torso.json`-style dict."""
    if isinstance(config, RunConfig):
        return config.num_outputs, config.class_names()
    count = int(config["num_outputs"])
    names = config.get("classes")
    return count, list(names) if names else [str(index) for index in range(count)]


class Task:
    """The interface the Learner uses; subclasses fill in the loss, metrics and decoding.

    Class attributes:
        name: the task's name in the CLI and in `torso.json` (`"classify"`, ...).
        main_metric: the metric that early stopping and save-best watch.
        higher_is_better: the direction of `main_metric`.
        cli_options: the options `torso train` offers for this task (`TaskOption`s).
        prediction_options: the names of those `torso predict` may change for one
            prediction (e.g. a score threshold); the others are fixed by the trained model.
        images_per_sample: images one prediction takes (2 for a pair).
        input_names: names of the model's inputs in an exported graph.
        output_meaning: what the model's raw outputs are, for an export's description.
        output_activation: the function that turns them into probabilities (None: none).
        exports_dynamic: whether an export may leave the batch and image size free (False
            when the exported graph is traced for one input shape, as a detector's is).
        serve_view: how the page of `torso serve` draws one answer: `"classes"` (the top
            classes and their probabilities), `"labels"`, `"values"`, `"mask"`, `"boxes"`,
            `"pair"`, or `"record"` (the record's fields as a table).
        purpose: what the model does, for its model card: a `str.format` template of `size`
            ("64x64"), `count` (outputs) and `classes` (their names, comma-separated).
    """

    name: str = ""
    main_metric: str = "valid_loss"
    higher_is_better: bool = False
    cli_options: tuple[TaskOption, ...] = ()
    prediction_options: tuple[str, ...] = ()
    images_per_sample: int = 1
    input_names: tuple[str, ...] = ("images",)
    output_meaning: str = "model outputs"
    output_activation: str | None = None
    exports_dynamic: bool = True
    serve_view: str = "record"
    purpose: str = "maps each {size} image to {count} outputs"

    def __init__(self, **options: Any) -> None:
        self.options: dict[str, Any] = dict(options)

    def __repr__(self) -> str:
        options = ", ".join(f"{key}={value!r}" for key, value in self.options.items())
        return f"{type(self).__name__}({options})"

    # -- data --------------------------------------------------------------------------------
    def data_layout(self):
        """How this task's data is read and its targets encoded: a `torso.data.DataLayout`
        (reader, kind of targets, pairs or not, what its folders look like). `torso.data` asks
        only this, never the task's name."""
        raise NotImplementedError(f"{type(self).__name__} must define data_layout()")

    def with_data(self, data: Any) -> Task:
        """This task with what it keeps of its training data `data` (a
        `torso.data.DataLoaders`) in its options, which `torso.json` saves: itself by default;
        detection keeps COCO's category ids to write its predictions with them."""
        return self

    # -- the model ---------------------------------------------------------------------------
    def head_options(self, config: RunConfig) -> dict[str, Any]:
        """Keyword arguments for the head: the config's `head_options` (and the task's own)."""
        return dict(config.head_options)

    def build_model(self, config: RunConfig, *, pretrained: bool | str = False) -> nn.Module:
        """The task's model, with `.body` and `.head`, from the run's config.

        Reads `backbone`, `num_outputs`, `in_channels` and `head_options`. `pretrained` is passed
        to `torso.models.create_model` (False when loading a checkpoint, whose weights replace
        the fresh ones).
        """
        from torso.models import create_model

        config = as_run_config(config)
        return create_model(
            config.backbone,
            config.num_outputs,
            pretrained=pretrained,
            in_channels=config.in_channels,
            **self.head_options(config),
        )

    def complete_config(self, config: RunConfig, model: nn.Module) -> RunConfig:
        """`config` with what only the built `model` knows, so that `torso.json` rebuilds the
        same model without the task's defaults: the body's normalisation stats."""
        return config.replace(stats=getattr(getattr(model, "body", None), "stats", None))

    def summary_notes(self, config: RunConfig, model: nn.Module) -> list[str]:
        """Lines `torso summary` prints under the table (e.g. the same model with other
        options); none by default."""
        return []

    # -- training ----------------------------------------------------------------------------
    def loss(
        self, outputs: torch.Tensor, targets: torch.Tensor, reduction: str = "mean"
    ) -> torch.Tensor:
        """The training loss: a scalar for `reduction="mean"`, one value per sample (N,) for
        `reduction="none"` (used to find the top losses)."""
        raise NotImplementedError(f"{type(self).__name__} must define loss()")

    def metrics(self, config: RunConfig) -> dict[str, Metric]:
        """Fresh torchmetrics objects, by name, for one pass over the validation set."""
        return {}

    def per_class_metrics(self, config: RunConfig | Mapping[str, Any]) -> list[str]:
        """The names among `metrics(config)` that measure one class each (`dice_road`, ...):
        `metrics.csv` and the report keep them; the progress display and the final line of
        `torso train` show only the others, so an epoch stays one line. None by default."""
        return []

    def metric_inputs(
        self, outputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """What the metrics' `update` receives: by default `(activation(outputs), targets)`."""
        return self.activation(outputs), targets

    # -- predictions -------------------------------------------------------------------------
    def activation(self, outputs: torch.Tensor) -> torch.Tensor:
        """Raw model outputs → probabilities or values (softmax, sigmoid, identity).

        Test-time augmentation averages these.
        """
        return outputs

    def decode(self, activations: torch.Tensor) -> torch.Tensor:
        """Activations → the answer: class index (N,), label mask (N, K), values (N, T)."""
        return activations

    def describe(
        self, activations: torch.Tensor, classes: list[str] | None
    ) -> list[dict[str, Any]]:
        """One plain record per sample for people and CSV files, e.g.
        `{"prediction": "cat", "probability": 0.93}`."""
        raise NotImplementedError(f"{type(self).__name__} must define describe()")

    def predict_records(
        self, predictor: Predictor, images: Any, *, tta: bool = False, batch_size: int = 32
    ) -> list[dict[str, Any]]:
        """`Predictor.predict`: one record per sample of `images` (anything
        `torso.data.prepare.prepare_images` takes). By default `describe` of the predictor's
        activations; a task whose answer depends on each image's own size (a mask) overrides
        it."""
        activations = predictor.activations(images, tta=tta, batch_size=batch_size)
        return self.describe(activations, predictor.config.class_names())

    def undo_flip(self, activations: torch.Tensor) -> torch.Tensor:
        """Activations of a horizontally mirrored input → those of the original (test-time
        augmentation): unchanged for per-image answers; mirrored back for per-pixel ones."""
        return activations

    def serve_records(
        self, predictor: Predictor, images: Sequence[torch.Tensor], *, batch_size: int = 32
    ) -> list[dict[str, Any]]:
        """`torso serve`'s answer: one JSON-able record per sample of `images` (decoded uint8
        tensors `(C, H, W)`, `images_per_sample` per sample), with the fields
        `predict_records` gives. A task whose records hold arrays, or positions in the
        prepared image, overrides it (a mask as PNG, boxes in the image's own pixels).

        `predictor` is a `Predictor`, or anything with its `config`, `task` and
        `activations` (the ONNX runtime of `torso serve --onnx`)."""
        return self.predict_records(predictor, list(images), batch_size=batch_size)

    # -- interpretation ----------------------------------------------------------------------
    def activation_maps(
        self, model: nn.Module, images: torch.Tensor, classes: torch.Tensor | None
    ) -> torch.Tensor:
        """`Predictor.explain`: class activation maps `(N, H, W)` in [0, 1] of prepared
        `images` `(N, C, H, W)`, each for class `classes[i]` (int64 `(N,)`), or for the class
        the task predicts when `classes` is None. A task whose answer is not one score per
        class and image has none: `NotExplainableError`."""
        raise NotExplainableError(
            f"a {self.name} model has no class activation map: Grad-CAM explains the score of "
            "one class of a whole image"
        )

    # -- export ------------------------------------------------------------------------------
    def export_details(self, config: RunConfig) -> dict[str, Any]:
        """Task-specific fields of an exported model's JSON description."""
        return {}

    def export_module(self, model: nn.Module) -> nn.Module:
        """What an export traces: a module from the input images to one tensor (the model
        itself by default; a detector wraps its decoded detections)."""
        return model

    def export_activation(self, outputs: torch.Tensor) -> torch.Tensor:
        """The activations from what an exported model gives (the outputs of
        `export_module`): `activation(outputs)` by default."""
        return self.activation(outputs)

    def export_difference(self, expected: torch.Tensor, produced: torch.Tensor) -> float:
        """How far an exported model's outputs are from PyTorch's (same shapes): the largest
        absolute difference by default."""
        return float((produced - expected).abs().max())

    # -- prediction files --------------------------------------------------------------------
    def predict_files(
        self,
        predictor: Predictor,
        paths: Sequence[Path],
        out: Path | None,
        *,
        tta: bool = False,
        batch_size: int = 32,
        overlays: Path | None = None,
    ) -> list[dict[str, Any]]:
        """`torso predict`: predict image files and write the results; returns the records.

        The default writes one CSV row per file (`path` + the task's record) to `out`, or to
        the screen when `out` is None. `paths` holds `images_per_sample` files per sample.
        `overlays`: a folder for the images with the answer drawn on them, for tasks that
        draw one (detection); the others refuse it.
        """
        refuse_overlays(self, overlays)
        from torso.files import atomic_write

        records: list[dict[str, Any]] = []
        step = batch_size * self.images_per_sample  # only one batch of images in memory
        for start in range(0, len(paths), step):
            chunk = list(paths[start : start + step])
            records.extend(predictor.predict(chunk, tta=tta, batch_size=batch_size))
        text = records_csv(paths, records)
        if out is None:
            sys.stdout.write(text)
        else:
            atomic_write(out, text)
            print(f"wrote {len(records)} predictions to {out}")
        return records

    def folder_accuracy(
        self, records: Sequence[Mapping[str, Any]], folders: Sequence[str], config: RunConfig
    ) -> float | None:
        """The share of `records` whose prediction is the name of the folder its image lies in,
        when those folder names are the run's classes; None when that does not apply."""
        return None

    # -- the report --------------------------------------------------------------------------
    def report_figures(self, predictor: Predictor, loader: Any, folder: Path) -> list[Path]:
        """The task's figures of a run's validation set `loader`, written into `folder`."""
        return []

    def report_parts(self, predictor: Predictor, loader: Any, folder: Path) -> ReportParts:
        """The task's figures and tables of a run's validation set `loader` (figures written
        into `folder`): by default `report_figures` and no table. A task with tables measures
        the loader once for both by overriding this."""
        return ReportParts(figures=self.report_figures(predictor, loader, folder))


def records_csv(paths: Sequence[Any], records: Sequence[Mapping[str, Any]]) -> str:
    """One CSV row per record: `path` and the record's fields, in order."""
    buffer = io.StringIO()
    columns = ["path", *records[0]] if records else ["path"]
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for path, record in zip(paths, records, strict=True):
        writer.writerow({"path": str(path), **record})
    return buffer.getvalue()


def refuse_overlays(task: Task, overlays: Path | None) -> None:
    """A `TorsoError` when `torso predict --overlays` is given to a task that draws none."""
    if overlays is not None:
        raise TorsoError(f"--overlays: the {task.name} task draws no overlays")
