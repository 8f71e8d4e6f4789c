"""Object detection: boxes and classes of the objects in an image, with torchvision's FCOS (or
RetinaNet) on a feature pyramid of the body (`torso.models.detection`).

Batches are `(images (N, C, H, W), targets)` where `targets` is a list of N dicts
`{"boxes": float32 (K, 4) xyxy in pixels of the (resized) image, "labels": int64 (K,)}`
(`torso.data.load_data(path, task="detect")`, from COCO, VOC, YOLO or labelme annotations).

How the loss reaches the Learner: the Learner calls `model(images)` and then
`task.loss(outputs, targets)`. The model returns a `DetectionOutput` (the head's raw outputs
and anchors, and in eval mode the decoded detections); `loss` sums the detector's own loss dict,
`outputs.losses(targets)` (torchvision's `compute_loss`: FCOS's focal, GIoU and centre-ness
losses; RetinaNet's focal and L1 losses). Nothing in the training loop knows about boxes.

`activation(outputs)` turns the detections into one tensor `(N, D, 6)`: rows
`x0, y0, x1, y1, score, class index`, best first, padded with rows of score 0 and class −1 to
`D = detections_per_image`, so `Predictor.predict` and `torso predict` work as for every task.
Metrics: torchmetrics' `MeanAveragePrecision` (COCO's evaluation, through pycocotools):
`map` (mAP over IoU .5:.95, the main metric), `map_50`, `map_75` and `ap_<class>` per class.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torso.config import RunConfig, as_run_config
from torso.errors import TorsoError
from torso.numbers import fraction
from torso.tasks.base import Task, TaskOption, output_names
from torso.tasks.segment import metric_name

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn
    from torchmetrics import Metric

    from torso.predictor import Predictor

#: Detections the model keeps per image (after NMS), and rows of the activations tensor.
DETECTIONS_PER_IMAGE = 100
#: Validation images the report shows with their true and predicted boxes.
REPORT_SAMPLES = 6
#: The report draws the predictions scoring at least this.
FIGURE_SCORE = 0.3
#: An export is compared with PyTorch on the detections scoring at least this: well above the
#: model's own cut (0.05), so a score that rounding moves across that cut is no difference.
EXPORT_CHECK_SCORE = 0.1


def to_original(
    boxes: torch.Tensor, height: int, width: int, size: int, resize: str
) -> torch.Tensor:
    """Boxes xyxy in pixels of an image prepared by `resize_square(size, resize)` → pixels of
    the original `height` x `width` image (the inverse of squish, crop or pad), clipped to it."""
    from torso.data.transforms import input_region

    left, top, right, bottom = input_region(height, width, size, resize)
    boxes = boxes.clone().float()
    boxes[:, 0::2] = (left + boxes[:, 0::2] * ((right - left) / size)).clamp(0, width)
    boxes[:, 1::2] = (top + boxes[:, 1::2] * ((bottom - top) / size)).clamp(0, height)
    return boxes


class DetectTask(Task):
    """Object detection; the loss is the detector's own (see the module's docstring).

    Options:
        detector: "fcos" (anchor-free, the default) or "retinanet" (torchvision's).
        pyramid_channels: the width of the feature pyramid and the detector head (256; a
            multiple of 32 and at least 64 for FCOS).
        score_threshold: `torso predict` and `describe` keep detections scoring at least this
            (the model itself keeps those above 0.05, as torchvision's detectors do); saved
            with the run, `torso predict --score-threshold` overrides it.
        category_ids: the annotations' own id of each class (COCO's category ids, in the
            order of the run's classes), which `torso predict` writes as `category_id`; None:
            the class's index. Taken from COCO training data (`with_data`), not a command-line
            option.
    """

    name = "detect"
    main_metric = "map"
    higher_is_better = True
    cli_options = (
        TaskOption(
            "detector",
            str,
            "fcos",
            "the detector on the feature pyramid: fcos or retinanet",
            choices=("fcos", "retinanet"),
        ),
        TaskOption("pyramid_channels", int, 256, "width of the feature pyramid and head (256)"),
        TaskOption(
            "score_threshold", fraction, 0.05, "predictions keep boxes scoring at least this"
        ),
    )
    prediction_options = ("score_threshold",)
    exports_dynamic = False  # post-processing is traced for one batch and image size
    serve_view = "boxes"
    output_meaning = (
        "detections (N, D, 6): x0, y0, x1, y1 in pixels of the prepared image, score, class "
        "index; padded with score 0 and class -1"
    )
    purpose = (
        "finds objects of {count} classes in {size} images, each as a box with its class and "
        "score: {classes}"
    )

    def __init__(
        self,
        detector: str = "fcos",
        pyramid_channels: int = 256,
        score_threshold: float = 0.05,
        category_ids: Sequence[int] | None = None,
    ) -> None:
        if detector not in ("fcos", "retinanet"):
            raise TorsoError(f"detector must be fcos or retinanet, got {detector!r}")
        if not 0 <= score_threshold <= 1:
            raise TorsoError(f"score_threshold must be in [0, 1], got {score_threshold}")
        if category_ids is not None:
            if isinstance(category_ids, str | bytes) or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in category_ids
            ):
                raise TorsoError(f"category_ids must be whole numbers, got {category_ids!r}")
            if len(set(category_ids)) != len(category_ids):
                raise TorsoError(f"category_ids must differ from each other, got {category_ids}")
            category_ids = list(category_ids)
        super().__init__(
            detector=detector,
            pyramid_channels=int(pyramid_channels),
            score_threshold=float(score_threshold),
            category_ids=category_ids,
        )

    # -- data --------------------------------------------------------------------------------
    def data_layout(self):
        """COCO, VOC, YOLO or labelme annotations (`torso.data.boxes`); targets are dicts of
        boxes and labels, one per image."""
        from torso.data import DataLayout
        from torso.data.boxes import BoxTargets, has_boxes, read_boxes

        return DataLayout(read=read_boxes, targets=BoxTargets(), looks_like=has_boxes)

    def with_data(self, data: Any) -> DetectTask:
        """With `category_ids` from COCO training data (`data.class_ids`), so that `torso
        predict` writes COCO's own ids and its results evaluate against the original
        annotations."""
        ids = getattr(data, "class_ids", None)
        if ids is None or list(ids) == self.options["category_ids"]:
            return self
        return DetectTask(**{**self.options, "category_ids": list(ids)})

    # -- the model ---------------------------------------------------------------------------
    def build_model(self, config: RunConfig, *, pretrained: bool | str = False) -> nn.Module:
        """`create_detection_model(backbone, num_outputs, detector=..., pyramid_channels=...)`."""
        from torso.models.detection import create_detection_model

        config = as_run_config(config)
        return create_detection_model(
            config.backbone,
            config.num_outputs,
            detector=self.options["detector"],
            pretrained=pretrained,
            in_channels=config.in_channels,
            pyramid_channels=self.options["pyramid_channels"],
            detections_per_image=DETECTIONS_PER_IMAGE,
        )

    def summary_notes(self, config: RunConfig, model: nn.Module) -> list[str]:
        """The pyramid's levels: which body stages feed it and its strides."""
        neck = model.head.backbone
        strides = [sizes[0] for sizes in model.head.anchor_generator.sizes]
        if self.options["detector"] == "retinanet":
            strides = [s // 4 for s in strides]
        return [
            f"Feature pyramid: {neck.levels} levels of {neck.out_channels} channels at strides "
            f"{', '.join(map(str, strides))}, from the body's last 3 stages "
            f"({', '.join(map(str, model.body.channels[-3:]))} channels); "
            f"{self.options['detector']} head"
        ]

    # -- training ----------------------------------------------------------------------------
    def loss(self, outputs: Any, targets: list[dict], reduction: str = "mean") -> torch.Tensor:
        """The sum of the detector's losses over the batch (`outputs.losses(targets)`); with
        `reduction="none"` that batch value for each image, `"sum"` times the batch size."""
        total = sum(outputs.losses(targets).values())
        if reduction == "none":
            return total.expand(len(targets))
        return total * len(targets) if reduction == "sum" else total

    def metrics(self, config: RunConfig) -> dict[str, Metric]:
        import importlib.util

        from torso.tasks.metrics import MapValue

        if importlib.util.find_spec("pycocotools") is None:
            raise TorsoError(
                "detection metrics need pycocotools: pip install 'torso[detect]' (or pycocotools)"
            )
        _, names = output_names(config)
        shared: dict[str, Any] = {}
        metrics: dict[str, Metric] = {"map": MapValue(shared, "map", feeds=True)}
        metrics["map_50"] = MapValue(shared, "map_50")
        metrics["map_75"] = MapValue(shared, "map_75")
        for index, class_name in enumerate(names):
            key = f"ap_{metric_name(class_name)}"
            metrics[key if key not in metrics else f"{key}_{index}"] = MapValue(
                shared, "map_per_class", index
            )
        return metrics

    def metric_inputs(self, outputs: Any, targets: list[dict]) -> tuple[list, list]:
        if outputs.detections is None:
            raise TorsoError("detections are made in eval mode: call model.eval() first")
        device = outputs.anchors[0].device
        truth = [
            {"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for t in targets
        ]
        return [{k: v.detach() for k, v in d.items()} for d in outputs.detections], truth

    # -- predictions -------------------------------------------------------------------------
    def activation(self, outputs: Any) -> torch.Tensor:
        """Detections → `(N, D, 6)`: x0, y0, x1, y1, score, class index (see the module)."""
        if outputs.detections is None:
            raise TorsoError("detections are made in eval mode: call model.eval() first")
        import torch

        rows = torch.zeros(len(outputs.detections), DETECTIONS_PER_IMAGE, 6)
        rows[:, :, 5] = -1
        for index, found in enumerate(outputs.detections):
            count = min(len(found["scores"]), DETECTIONS_PER_IMAGE)
            order = found["scores"].argsort(descending=True)[:count]
            rows[index, :count, :4] = found["boxes"][order].detach().float().cpu()
            rows[index, :count, 4] = found["scores"][order].detach().float().cpu()
            rows[index, :count, 5] = found["labels"][order].float().cpu()
        return rows

    def decode(self, activations: torch.Tensor) -> torch.Tensor:
        return activations

    def kept(self, rows: torch.Tensor) -> torch.Tensor:
        """The rows of one image's activations `(D, 6)` that are detections scoring at least
        `score_threshold`."""
        keep = (rows[:, 5] >= 0) & (rows[:, 4] >= self.options["score_threshold"])
        return rows[keep]

    def describe(self, activations: torch.Tensor, classes: list[str] | None) -> list[dict]:
        """Per image `{"boxes": [[x0, y0, x1, y1], ...], "labels": [names], "scores": [...]}`,
        boxes in pixels of the prepared image."""
        records = []
        for rows in activations:
            rows = self.kept(rows)
            labels = [int(label) for label in rows[:, 5].tolist()]
            records.append(
                {
                    "boxes": [[round(v, 2) for v in box] for box in rows[:, :4].tolist()],
                    "labels": [classes[i] if classes else str(i) for i in labels],
                    "scores": [round(s, 4) for s in rows[:, 4].tolist()],
                }
            )
        return records

    def undo_flip(self, activations: torch.Tensor) -> torch.Tensor:
        raise TorsoError("test-time augmentation is not available for detection")

    def serve_records(
        self, predictor: Predictor, images: Sequence[torch.Tensor], *, batch_size: int = 32
    ) -> list[dict[str, Any]]:
        """`describe`'s records, with the boxes in pixels of each image as it was given (the
        inverse of the run's resize), not of the prepared image."""
        config = predictor.config
        activations = predictor.activations(list(images), batch_size=batch_size)
        classes = config.class_names()
        records = []
        for image, rows in zip(images, activations, strict=True):
            rows = self.kept(rows)
            height, width = image.shape[-2:]
            boxes = to_original(rows[:, :4], height, width, config.size[0], config.resize)
            records.append(
                {
                    "boxes": [[round(v, 2) for v in box] for box in boxes.tolist()],
                    "labels": [classes[int(label)] for label in rows[:, 5].tolist()],
                    "scores": [round(s, 4) for s in rows[:, 4].tolist()],
                }
            )
        return records

    # -- export ------------------------------------------------------------------------------
    def export_module(self, model: nn.Module) -> nn.Module:
        """The detector with its post-processing (score cut, NMS, top-k) and padding: images →
        `(N, D, 6)`, the rows `activation` gives."""
        from torso.models.detection import PaddedDetectionModel

        return PaddedDetectionModel(model, DETECTIONS_PER_IMAGE)

    def export_activation(self, outputs: torch.Tensor) -> torch.Tensor:
        """The exported graph gives `activation`'s rows `(N, D, 6)` itself."""
        return outputs.float()

    def export_difference(self, expected: torch.Tensor, produced: torch.Tensor) -> float:
        """Per image, each detection scoring at least `EXPORT_CHECK_SCORE` in one output is
        paired with the closest detection of its class in the other (any score): the largest
        absolute difference of box corners and score over those pairs (a box one output lacks
        is paired with another box, far off; infinite when the other has none of its class).
        Rows of nearly equal scores may come out in another order without counting as a
        difference."""
        largest = 0.0
        for one, other in ((expected, produced), (produced, expected)):
            for rows, candidates in zip(one, other, strict=True):
                rows = rows[(rows[:, 5] >= 0) & (rows[:, 4] >= EXPORT_CHECK_SCORE)]
                candidates = candidates[candidates[:, 5] >= 0]
                for row in rows:
                    same = candidates[candidates[:, 5] == row[5]]
                    if not len(same):
                        return float("inf")
                    closest = (same[:, :5] - row[:5]).abs().max(dim=1).values.min()
                    largest = max(largest, float(closest))
        return largest

    def export_details(self, config: RunConfig) -> dict[str, Any]:
        return {
            "postprocessing": "inside the graph: score at least 0.05, class-wise NMS (IoU 0.6), "
            f"the best {DETECTIONS_PER_IMAGE} per image, padded",
            "compared_detections": f"scoring at least {EXPORT_CHECK_SCORE}, paired by class and "
            "closest box",
        }

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
        """`torso predict`: COCO *results* JSON, one record a box: `{"file_name", "category_id"
        (the class's COCO category id when the run was trained on COCO annotations, so the file
        evaluates against them; else its index in the run's classes), "category", "bbox": [x,
        y, w, h] in pixels of the original image, "score"}`, boxes scoring at least
        `score_threshold`. With `overlays`, each image is also written there as
        `<stem>_boxes.png` with its boxes drawn and labelled (class and score)."""
        from torso.data.decode import read_image
        from torso.files import atomic_write

        if tta:
            raise TorsoError("--tta is not available for detection")
        config = predictor.config
        classes = config.class_names()
        ids = self.options.get("category_ids") or list(range(len(classes)))
        if len(ids) != len(classes):
            raise TorsoError(
                f"the run's category_ids ({len(ids)}) do not match its {len(classes)} classes"
            )
        records: list[dict[str, Any]] = []
        for start in range(0, len(paths), batch_size):
            chunk = list(paths[start : start + batch_size])
            images = [read_image(Path(path), config.in_channels) for path in chunk]
            activations = predictor.activations(images, batch_size=batch_size)
            for path, image, rows in zip(chunk, images, activations, strict=True):
                rows = self.kept(rows)
                height, width = image.shape[-2:]
                boxes = to_original(rows[:, :4], height, width, config.size[0], config.resize)
                if overlays is not None:
                    pairs = zip(rows[:, 5].tolist(), rows[:, 4].tolist(), strict=True)
                    labels = [f"{classes[int(label)]} {score:.2f}" for label, score in pairs]
                    picture = draw_boxes(image, boxes.tolist(), labels)
                    atomic_write(Path(overlays) / f"{Path(path).stem}_boxes.png", picture)
                for box, score, label in zip(
                    boxes.tolist(), rows[:, 4].tolist(), rows[:, 5].tolist(), strict=True
                ):
                    x0, y0, x1, y1 = box
                    records.append(
                        {
                            "file_name": Path(path).name,
                            "category_id": ids[int(label)],
                            "category": classes[int(label)],
                            "bbox": [
                                round(x0, 2),
                                round(y0, 2),
                                round(x1 - x0, 2),
                                round(y1 - y0, 2),
                            ],
                            "score": round(score, 5),
                        }
                    )
        text = json.dumps(records, indent=1) + "\n"
        if out is None:
            sys.stdout.write(text)
        else:
            atomic_write(out, text)
            print(f"wrote {len(records)} boxes of {len(paths)} images to {out}")
        if overlays is not None:
            print(f"wrote {len(paths)} images with their boxes to {overlays}")
        return records

    # -- the report --------------------------------------------------------------------------
    def report_figures(self, predictor: Predictor, loader: Any, folder: Path) -> list[Path]:
        """A few validation images with their true boxes (green) and the predicted ones scoring
        at least `FIGURE_SCORE` (red)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Rectangle

        classes = predictor.config.class_names()
        shown: list[tuple[torch.Tensor, dict, torch.Tensor]] = []
        for images, targets in loader:
            activations = predictor.activations(images)
            for image, target, rows in zip(images, targets, activations, strict=True):
                shown.append((image, target, self.kept(rows)))
            if len(shown) >= REPORT_SAMPLES:
                break
        shown = shown[:REPORT_SAMPLES]
        if not shown:
            return []
        figure, axes = plt.subplots(1, len(shown), figsize=(3 * len(shown), 3.3), squeeze=False)
        for ax, (image, target, rows) in zip(axes[0], shown, strict=True):
            pixels = image.permute(1, 2, 0).float().clamp(0, 1).numpy()
            ax.imshow(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels[:, :, :3], cmap="gray")
            for (x0, y0, x1, y1), label in zip(
                target["boxes"].tolist(), target["labels"].tolist(), strict=True
            ):
                ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="lime"))
                ax.text(x0, y1, classes[int(label)], color="lime", fontsize=6, va="top")
            for x0, y0, x1, y1, score, label in rows[rows[:, 4] >= FIGURE_SCORE].tolist():
                ax.add_patch(
                    Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="red", ls="--")
                )
                ax.text(x0, y0, f"{classes[int(label)]} {score:.2f}", color="red", fontsize=6)
            ax.set_axis_off()
        figure.suptitle("true boxes (green) and predictions (red, dashed)", fontsize=9)
        path = folder / "detections.png"
        figure.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(figure)
        return [path]


def draw_boxes(image: torch.Tensor, boxes: list[list[float]], labels: list[str]) -> bytes:
    """PNG bytes of `image` (C, H, W: uint8 as decoded, or floats in [0, 1]) with each box
    `[x0, y0, x1, y1]` (pixels of that image) outlined and its label written above it."""
    import io

    import torch
    from PIL import Image, ImageDraw

    pixels = image if image.dtype == torch.uint8 else (image.clamp(0, 1) * 255).round()
    pixels = pixels.to(torch.uint8)
    pixels = pixels.expand(3, -1, -1) if pixels.shape[0] == 1 else pixels[:3]
    picture = Image.fromarray(pixels.permute(1, 2, 0).numpy())
    draw = ImageDraw.Draw(picture)
    width = max(1, round(max(picture.size) / 300))
    for (x0, y0, x1, y1), label in zip(boxes, labels, strict=True):
        draw.rectangle((x0, y0, x1, y1), outline=(255, 40, 40), width=width)
        left, top, right, bottom = draw.textbbox((x0, y0), label)
        shift = bottom - top + 2
        draw.rectangle((left, top - shift, right + 2, bottom - shift), fill=(255, 40, 40))
        draw.text((x0 + 1, y0 - shift), label, fill=(255, 255, 255))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()
