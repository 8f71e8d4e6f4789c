"""Semantic segmentation: a class for every pixel, with a U-Net decoder on the body.

Batches are `(images (N, C, H, W), masks int64 (N, H, W))` (`torso.data.load_data(path,
task="segment")`); mask pixels equal to `ignore_index` (255, "void") count for nothing. The model
is `torso.models.segmentation.DynamicUnet(body, num_classes)`, or with
`architecture="unet2015"` the 2015 paper's `UNet2015` with padded convolutions; either way its
outputs are class scores (logits) `(N, num_classes, H, W)` at the image's size.

`torso predict` of a segmentation run (`SegmentTask.predict_files`) writes, for each image, a
palette mask PNG at the image's own size and an overlay, and a CSV of each class's share of the
pixels; `Predictor.predict` (and `Learner.predict`) gives each image's mask at the image's own
size as a record (`mask_record`); the report shows image | truth | prediction for a few
validation images.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torso.config import RunConfig, as_run_config
from torso.errors import TorsoError
from torso.files import unique_stems
from torso.tasks.base import Task, TaskOption, output_names

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn
    from torchmetrics import Metric

    from torso.predictor import Predictor

#: Validation images the report shows as image | truth | prediction.
SEGMENTATION_SAMPLES = 6
#: The class shares of `torso predict`'s masks.
CSV_NAME = "predictions.csv"

#: Smoothing of the soft Dice loss, in pixels: keeps classes absent from an image from
#: dividing by zero and makes the loss of an empty class whose prediction is empty about zero.
DICE_SMOOTHING = 1.0
#: The widest decoder cap `decoder_width="auto"` chooses: smp's Unet widths (256 at the middle,
#: halved at each level nearer the image).
DECODER_CAP = 256
#: The narrowest cap `decoder_width="auto"` chooses.
MIN_DECODER_CAP = 16
#: `decoder_width` values besides a number: a cap chosen from the body, or fastai's widths.
DECODER_WIDTHS = ("auto", "full")
#: Model architectures of the task: a decoder on any body, or the 2015 paper's U-Net.
ARCHITECTURES = ("dynamic_unet", "unet2015")


def metric_name(class_name: str) -> str:
    """A class name as a metric-column suffix: letters, digits and `_` only (`"road sign"` →
    `"road_sign"`)."""
    return re.sub(r"\W+", "_", str(class_name)).strip("_") or "class"


def auto_decoder_width(channels: Sequence[int]) -> int:
    """The decoder cap `decoder_width="auto"` gives a body whose stages have `channels`: its
    last (deepest) width rounded down to a power of two, kept within 16..256.

    A body with a narrow last map gets a narrow decoder, every usual body smp's 256. fastai's
    widths grow with the last width instead (2× at the middle): 78 M decoder parameters on
    efficientnet_lite0's 3.4 M body, 4.3 M with this cap. The rule is part of what a saved
    `torso.json` means: a model saved with `"auto"` is rebuilt with the same cap.
    """
    deepest = max(int(channels[-1]), 1)
    return max(MIN_DECODER_CAP, min(DECODER_CAP, 1 << (deepest.bit_length() - 1)))


def decoder_width_option(text: str) -> int | str:
    """argparse type of `--decoder-width`: `auto`, `full` (or `fastai`), or a whole number ≥ 2."""
    import argparse

    word = text.strip().lower()
    if word in DECODER_WIDTHS:
        return word
    if word == "fastai":
        return "full"
    try:
        value = int(word)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not auto, full or a whole number") from None
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be at least 2, got {value}")
    return value


def soft_dice_loss(
    scores: torch.Tensor, targets: torch.Tensor, ignore_index: int, per_sample: bool
) -> torch.Tensor:
    """1 − the soft Dice coefficient, averaged over classes; void pixels are left out.

    scores: logits `(N, K, H, W)`; targets: class ids `(N, H, W)`. Returns a scalar over the
    whole batch, or `(N,)` with `per_sample`.
    """
    import torch
    import torch.nn.functional as F

    probabilities = scores.softmax(dim=1)
    valid = (targets != ignore_index).unsqueeze(1)
    truth = F.one_hot(torch.where(valid[:, 0], targets, 0), scores.shape[1]).permute(0, 3, 1, 2)
    probabilities = probabilities * valid
    truth = truth * valid
    dims = (2, 3) if per_sample else (0, 2, 3)
    overlap = (probabilities * truth).sum(dims)
    total = probabilities.sum(dims) + truth.sum(dims)
    dice = (2 * overlap + DICE_SMOOTHING) / (total + DICE_SMOOTHING)
    return 1 - dice.mean(dim=-1)


class SegmentTask(Task):
    """Cross-entropy over pixels (void pixels ignored), plus an optional soft Dice term.

    Metrics (void pixels left out): `pixel_accuracy`; `dice` (mean over the classes present in
    the truth or the prediction, the background class included), `dice_foreground` (the same
    mean over every class but the first, which `codes.txt` lists first and which is taken to
    be the background; with two classes, the object's Dice) and `dice_<class>` per class (in
    `metrics.csv` and the report, not on the console: `per_class_metrics`); `mean_iou`
    (intersection over union averaged over the classes present, the main metric). Dice and IoU
    are computed over all validation pixels together, not averaged image by image.

    Options:
        ignore_index: the mask value of pixels without a class (255).
        dice_weight: weight of the soft Dice loss added to the cross-entropy (0: none).
        decoder_width: cap on the U-Net decoder's widths (`DynamicUnet(decoder_width=...)`):
            `"auto"` (default) chooses it from the body (`auto_decoder_width`: smp's 256, less
            for a narrow body); `"full"` keeps fastai's widths (as `DynamicUnet` does by
            default; `None`, what runs saved before `"auto"` hold, means the same); or a number.
        self_attention: a self-attention layer in the decoder, as fastai's option.
        architecture: "dynamic_unet" (a U-Net decoder on the backbone's body) or "unet2015"
            (the paper's U-Net, `UNet2015(padding=True)`: its own contracting path instead of
            the backbone, random weights only; padded so its scores have the image's size, where
            the paper's unpadded network would give a map 184 pixels smaller).
    """

    name = "segment"
    main_metric = "mean_iou"
    higher_is_better = True
    cli_options = (
        TaskOption(
            "architecture",
            str,
            "dynamic_unet",
            "the model: fastai's U-Net on the body (dynamic_unet), or the original U-Net of "
            "2015 (unet2015)",
            choices=("dynamic_unet", "unet2015"),
        ),
        TaskOption(
            "decoder_width",
            decoder_width_option,
            "auto",
            "cap on the U-Net decoder's widths: auto (from the body: 256, less for a narrow "
            "one), full (fastai's widths, a far larger model) or a number such as 128",
            metavar="auto|full|N",
        ),
        TaskOption(
            "dice_weight", float, 0.0, "weight of a soft Dice loss added to the cross-entropy (0)"
        ),
        TaskOption("self_attention", bool, False, "a self-attention layer in the decoder"),
    )
    output_meaning = "class scores (logits) per pixel (N, K, H, W); softmax over K"
    purpose = "assigns each pixel of {size} images one of {count} classes: {classes}"
    output_activation = "softmax"
    serve_view = "mask"

    def __init__(
        self,
        ignore_index: int = 255,
        dice_weight: float = 0.0,
        decoder_width: int | str | None = "auto",
        self_attention: bool = False,
        architecture: str = "dynamic_unet",
    ) -> None:
        if isinstance(ignore_index, bool) or not 0 <= int(ignore_index) <= 255:
            raise TorsoError(f"ignore_index must be between 0 and 255, got {ignore_index}")
        if not 0 <= dice_weight < float("inf"):
            raise TorsoError(f"dice_weight must be 0 or more, got {dice_weight}")
        if decoder_width is None or decoder_width == "fastai":
            decoder_width = "full"
        if isinstance(decoder_width, bool) or not (
            decoder_width in DECODER_WIDTHS
            or (isinstance(decoder_width, int) and decoder_width >= 2)
        ):
            raise TorsoError(
                f"decoder_width must be auto, full or a whole number of at least 2, "
                f"got {decoder_width!r}"
            )
        if architecture not in ARCHITECTURES:
            raise TorsoError(
                f"architecture must be one of {', '.join(ARCHITECTURES)}, got {architecture!r}"
            )
        if architecture == "unet2015" and (isinstance(decoder_width, int) or self_attention):
            raise TorsoError("decoder_width and self_attention are options of dynamic_unet")
        super().__init__(
            ignore_index=int(ignore_index),
            dice_weight=float(dice_weight),
            decoder_width=decoder_width,
            self_attention=bool(self_attention),
            architecture=architecture,
        )

    # -- data --------------------------------------------------------------------------------
    def data_layout(self):
        """`images/` + `masks/` folders (and `codes.txt`), recognised by those two folders;
        targets int64 `(size, size)` masks."""
        from torso.data import DataLayout, MaskTargets, has_images_and_masks, read_masks

        return DataLayout(read=read_masks, targets=MaskTargets(), looks_like=has_images_and_masks)

    # -- the model ---------------------------------------------------------------------------
    def head_options(self, config: RunConfig) -> dict[str, Any]:
        """`DynamicUnet` keyword arguments: the config's `head_options` and this task's options
        (a `decoder_width` of `"auto"` is resolved by `decoder_width`, which sees the body)."""
        options = super().head_options(config)
        if isinstance(self.options["decoder_width"], int):
            options.setdefault("decoder_width", self.options["decoder_width"])
        if self.options["self_attention"]:
            options.setdefault("self_attention", True)
        if isinstance(options.get("y_range"), list):
            options["y_range"] = tuple(options["y_range"])
        return options

    def decoder_width(self, config: RunConfig, channels: Sequence[int]) -> int | None:
        """The cap on the decoder's widths for a body whose stages have `channels`: the
        config's or the task's number, `auto_decoder_width(channels)` for `"auto"`, None
        (fastai's widths) for `"full"`."""
        given = self.head_options(config).get("decoder_width", self.options["decoder_width"])
        if given == "auto":
            return auto_decoder_width(channels)
        return None if given in (None, "full") else int(given)

    def build_model(self, config: RunConfig, *, pretrained: bool | str = False) -> nn.Module:
        """`DynamicUnet(create_body(backbone), num_outputs, ...)` from the run's config, or
        `UNet2015(in_channels, num_outputs, padding=True)` (backbone not used)."""
        from torso.models.bodies import create_body
        from torso.models.segmentation import DynamicUnet, UNet2015

        config = as_run_config(config)
        if self.options.get("architecture", "dynamic_unet") == "unet2015":
            if pretrained is not False:
                raise TorsoError("UNet2015 has no pretrained weights: train it from random ones")
            return UNet2015(config.in_channels, config.num_outputs, padding=True)
        body = create_body(config.backbone, pretrained=pretrained, in_channels=config.in_channels)
        options = self.head_options(config)
        options["decoder_width"] = self.decoder_width(config, body.channels)
        return DynamicUnet(body, config.num_outputs, **options)

    def complete_config(self, config: RunConfig, model: nn.Module) -> RunConfig:
        """Also the decoder cap the model was built with (`"auto"` resolved from the body), in
        `head_options`, so a saved run does not depend on how `"auto"` chooses."""
        from torso.models.segmentation import DynamicUnet

        config = super().complete_config(config, model)
        if not isinstance(model, DynamicUnet):
            return config
        width = self.decoder_width(config, model.body.channels)
        return config.replace(head_options={**config.head_options, "decoder_width": width})

    def summary_notes(self, config: RunConfig, model: nn.Module) -> list[str]:
        """For a DynamicUnet: its parameters next to those of the same U-Net with fastai's
        widths (`--decoder-width full`) when capped, or with the automatic cap when not."""
        from torso.models.segmentation import DynamicUnet

        if not isinstance(model, DynamicUnet):
            return []
        cap = self.decoder_width(config, model.body.channels)
        other_cap = None if cap is not None else auto_decoder_width(model.body.channels)
        options = {**self.head_options(config), "decoder_width": other_cap}
        other = DynamicUnet(model.body, config.num_outputs, **options)
        total = sum(p.numel() for p in other.parameters())
        this = sum(p.numel() for p in model.parameters())
        here = "fastai's widths" if cap is None else f"decoder capped at {cap}"
        label = (
            "fastai's widths (--decoder-width full)"
            if cap is not None
            else f"the decoder capped at {other_cap} (--decoder-width auto)"
        )
        return [f"The same U-Net with {label}: {total:,} parameters ({this:,} here, {here})"]

    # -- training ----------------------------------------------------------------------------
    def loss(
        self, outputs: torch.Tensor, targets: torch.Tensor, reduction: str = "mean"
    ) -> torch.Tensor:
        """Mean cross-entropy over the non-void pixels (+ `dice_weight` × soft Dice loss).

        `outputs (N, K, H, W)`, `targets (N, H, W)`; `reduction="none"` gives one value per image
        (its own non-void pixels), `"sum"` the sum of those.
        """
        import torch.nn.functional as F

        if outputs.ndim != 4 or targets.shape != outputs.shape[:1] + outputs.shape[2:]:
            raise TorsoError(
                f"segmentation outputs (N, K, H, W) and masks (N, H, W) do not match: "
                f"{tuple(outputs.shape)} and {tuple(targets.shape)}"
            )
        outputs = outputs.float()
        targets = targets.long()
        ignore_index = self.options["ignore_index"]
        pixel_losses = F.cross_entropy(
            outputs, targets, ignore_index=ignore_index, reduction="none"
        )
        valid = targets != ignore_index
        per_sample = reduction in ("none", "sum")
        if per_sample:
            losses = pixel_losses.sum(dim=(1, 2)) / valid.sum(dim=(1, 2)).clamp(min=1)
        else:
            losses = pixel_losses.sum() / valid.sum().clamp(min=1)
        if self.options["dice_weight"] > 0:
            dice = soft_dice_loss(outputs, targets, ignore_index, per_sample)
            losses = losses + self.options["dice_weight"] * dice
        return losses.sum() if reduction == "sum" else losses

    def metrics(self, config: RunConfig) -> dict[str, Metric]:
        from torchmetrics.classification import (
            MulticlassAccuracy,
            MulticlassF1Score,
            MulticlassJaccardIndex,
        )

        from torso.tasks.metrics import ForegroundDice

        num_classes, names = output_names(config)
        ignore_index = self.options["ignore_index"]
        common = {"num_classes": num_classes, "ignore_index": ignore_index, "validate_args": False}
        metrics: dict[str, Metric] = {
            "pixel_accuracy": MulticlassAccuracy(average="micro", **common),
            "dice": MulticlassF1Score(average="macro", **common),
        }
        if num_classes > 1:
            metrics["dice_foreground"] = ForegroundDice(num_classes, ignore_index)
        metrics["mean_iou"] = MulticlassJaccardIndex(average="macro", **common)
        for key, index in self._class_metric_keys(config):
            metrics[key] = MulticlassF1Score(average="none", **common)[index]
        return metrics

    def per_class_metrics(self, config: RunConfig | Mapping[str, Any]) -> list[str]:
        """The `dice_<class>` columns."""
        return [key for key, _ in self._class_metric_keys(config)]

    @staticmethod
    def _class_metric_keys(config: RunConfig | Mapping[str, Any]) -> list[tuple[str, int]]:
        """`(dice_<class>, class id)` for each class; a name that would repeat another column
        gets its id appended (`dice_foreground_1` for a class named "foreground")."""
        num_classes, names = output_names(config)
        taken = {"dice", "dice_foreground"}
        keys = []
        for index, class_name in enumerate(names[:num_classes]):
            key = f"dice_{metric_name(class_name)}"
            if key in taken:
                key = f"{key}_{index}"
            taken.add(key)
            keys.append((key, index))
        return keys

    def metric_inputs(
        self, outputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Class ids, not scores: the metrics compare pixels and need no (N, K, H, W) copy.
        return outputs.argmax(dim=1), targets.long()

    # -- predictions -------------------------------------------------------------------------
    def activation(self, outputs: torch.Tensor) -> torch.Tensor:
        """Logits → per-pixel class probabilities `(N, K, H, W)`."""
        return outputs.float().softmax(dim=1)

    def decode(self, activations: torch.Tensor) -> torch.Tensor:
        """Probabilities `(N, K, H, W)` → the mask of class ids, int64 `(N, H, W)`."""
        return activations.argmax(dim=1)

    def describe(
        self, activations: torch.Tensor, classes: list[str] | None
    ) -> list[dict[str, Any]]:
        """The mask of each image at the activations' size, as `mask_record` gives it."""
        num_classes = activations.shape[1]
        names = classes or [str(index) for index in range(num_classes)]
        return [mask_record(mask, names) for mask in self.decode(activations)]

    def predict_records(
        self, predictor: Predictor, images: Any, *, tta: bool = False, batch_size: int = 32
    ) -> list[dict[str, Any]]:
        """`Predictor.predict`: each image's mask at the image's own size (`predict_masks`),
        as `mask_record` gives it."""
        names = predictor.config.class_names()
        masks = predict_masks(predictor, _image_list(images), tta=tta, batch_size=batch_size)
        return [mask_record(mask, names) for mask in masks]

    def undo_flip(self, activations: torch.Tensor) -> torch.Tensor:
        """Per-pixel probabilities of a mirrored image, mirrored back: `(N, K, H, W)`."""
        return activations.flip(-1)

    def serve_records(
        self, predictor: Predictor, images: Sequence[torch.Tensor], *, batch_size: int = 32
    ) -> list[dict[str, Any]]:
        """`predict_records` with each mask as a PNG: `{"mask": {"encoding": "png", "width",
        "height", "data": base64 of a single-channel 8-bit PNG whose pixel values are the class
        ids (255 where the model did not see the image)}, "classes": [...], "shares": {...}}`."""
        records = self.predict_records(predictor, list(images), batch_size=batch_size)
        return [{**record, "mask": mask_png(record["mask"])} for record in records]

    # -- export ------------------------------------------------------------------------------
    def export_details(self, config: RunConfig) -> dict[str, Any]:
        return {"ignore_index": self.options["ignore_index"]}

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
        """Into the folder `out`: for each image `photo.jpg`, `photo_mask.png` (a palette PNG
        whose pixel values are the class ids, at the image's own size) and `photo_overlay.png`
        (the image with the classes' colours blended in); and `predictions.csv`: each file, its
        mask and the share of its pixels given to each class. Returns those rows."""
        import numpy as np

        if overlays is not None:
            raise TorsoError("--overlays: a segmentation run writes its overlays into --out")
        from torso.data.decode import read_pil
        from torso.files import atomic_write
        from torso.plots import mask_to_image, overlay_image

        if out is None:
            raise TorsoError("a segmentation model writes mask images: give --out FOLDER")
        folder = Path(out)
        if folder.exists() and not folder.is_dir():
            raise TorsoError(f"--out '{folder}': a segmentation run writes a folder of masks")
        folder.mkdir(parents=True, exist_ok=True)
        num_classes, classes = output_names(predictor.config)
        records: list[dict[str, Any]] = []
        rows: list[list[str]] = []
        stems = unique_stems(paths)
        for start in range(0, len(paths), batch_size):
            chunk = list(paths[start : start + batch_size])
            masks = predict_masks(predictor, chunk, tta=tta, batch_size=batch_size)
            for path, stem, mask in zip(
                chunk, stems[start : start + len(chunk)], masks, strict=True
            ):
                values = mask.numpy()
                mask_file = folder / f"{stem}_mask.png"
                mask_to_image(values, num_classes).save(mask_file)
                overlay = overlay_image(read_pil(Path(path)), values, num_classes)
                overlay.save(folder / f"{stem}_overlay.png")
                counts = np.bincount(values.reshape(-1), minlength=256)[:num_classes]
                total = max(int(counts.sum()), 1)
                shares = [f"{count / total:.6f}" for count in counts]
                rows.append([str(path), mask_file.name, *shares])
                records.append({"mask": mask_file.name, **dict(zip(classes, shares, strict=True))})
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["path", "mask", *classes])
        writer.writerows(rows)
        atomic_write(folder / CSV_NAME, buffer.getvalue())
        print(
            f"wrote {len(paths)} masks and overlays to {folder}; class shares in "
            f"{folder / CSV_NAME}"
        )
        return records

    # -- the report --------------------------------------------------------------------------
    def report_figures(self, predictor: Predictor, loader: Any, folder: Path) -> list[Path]:
        """Image | truth | prediction for the first `SEGMENTATION_SAMPLES` validation images
        (`segmentation.png`), and for the `SEGMENTATION_SAMPLES` of lowest Dice
        (`image_dice`), lowest first (`worst_dice.png`)."""
        import torch

        from torso import plots

        classes = predictor.config.class_names()
        shown: list[tuple[torch.Tensor, ...]] = []
        worst: tuple[torch.Tensor, ...] | None = None
        for x, y in loader:
            if not isinstance(x, torch.Tensor):
                return []
            images, truths = x.float().cpu(), y.cpu().reshape(len(x), *x.shape[-2:])
            predicted = self.decode(predictor.activations(images))
            if sum(len(part[0]) for part in shown) < SEGMENTATION_SAMPLES:
                shown.append((images, truths, predicted))
            dice = image_dice(predicted, truths, len(classes), self.options["ignore_index"])
            worst = lowest(worst, (images, truths, predicted, dice), SEGMENTATION_SAMPLES)
        if worst is None:
            return []
        first = [torch.cat(parts)[:SEGMENTATION_SAMPLES] for parts in zip(*shown, strict=True)]
        notes = [f"Dice {value:.3f}" for value in worst[3].tolist()]
        return [
            plots.plot_segmentation(*first, classes, folder / "segmentation.png"),
            plots.plot_segmentation(*worst[:3], classes, folder / "worst_dice.png", notes=notes),
        ]


def image_dice(
    predicted: torch.Tensor, truth: torch.Tensor, num_classes: int, ignore_index: int
) -> torch.Tensor:
    """The Dice of each image `(N,)`: 2|P∩T| / (|P| + |T|) of each class, averaged over the
    classes in the image's truth or prediction; void pixels left out, 1 for an image whose
    pixels are all void. predicted, truth: class ids `(N, H, W)`."""
    import torch
    import torch.nn.functional as F

    valid = (truth != ignore_index).unsqueeze(-1)
    truth_ids = torch.where(valid[..., 0], truth, 0).long()
    guessed = F.one_hot(predicted.long(), num_classes).bool() & valid
    actual = F.one_hot(truth_ids, num_classes).bool() & valid
    overlap = (guessed & actual).sum(dim=(1, 2)).double()
    total = (guessed.sum(dim=(1, 2)) + actual.sum(dim=(1, 2))).double()
    present = total > 0
    per_class = torch.where(present, 2 * overlap / total.clamp(min=1), 0.0)
    dice = per_class.sum(dim=1) / present.sum(dim=1).clamp(min=1)
    return torch.where(present.any(dim=1), dice, 1.0).float()


def lowest(
    kept: tuple[torch.Tensor, ...] | None, new: tuple[torch.Tensor, ...], count: int
) -> tuple[torch.Tensor, ...]:
    """The `count` samples of lowest score among `kept` and `new` (tensors of the same
    length, the score last), lowest first: the report keeps a few images, never all."""
    import torch

    merged = new if kept is None else tuple(torch.cat(pair) for pair in zip(kept, new, strict=True))
    order = torch.argsort(merged[-1], stable=True)[:count]
    return tuple(part[order] for part in merged)


def mask_record(mask: torch.Tensor, classes: Sequence[str]) -> dict[str, Any]:
    """A predicted mask for people and code: `{"mask": uint8 ndarray (H, W) of class ids (255
    where the model did not see the image: `resize="crop"`'s cut-off sides), "classes": the
    class names, whose positions are the ids, "shares": {class name: share of the pixels}}`
    (shares of the pixels that have a class, rounded to 6 digits)."""
    import numpy as np
    import torch

    values = mask.to(torch.uint8).numpy()
    counts = np.bincount(values.reshape(-1), minlength=256)[: len(classes)]
    total = max(int(counts.sum()), 1)
    shares = {
        name: round(float(count) / total, 6) for name, count in zip(classes, counts, strict=True)
    }
    return {"mask": values, "classes": list(classes), "shares": shares}


def mask_png(mask: Any) -> dict[str, Any]:
    """A uint8 mask `(H, W)` (numpy) of class ids as JSON: `{"encoding": "png", "width", "height",
    "data": the base64 text of a single-channel 8-bit PNG whose pixel values are the ids}`."""
    import base64

    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8), mode="L").save(buffer, "PNG")
    height, width = mask.shape
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return {"encoding": "png", "width": int(width), "height": int(height), "data": data}


def _image_list(images: Any) -> list[Any]:
    """What `prepare_images` takes (one image, a list of them, a batch tensor) as a list."""
    import torch

    from torso.data.prepare import ImageInput

    if isinstance(images, torch.Tensor) and images.ndim == 4:
        return list(images)
    if isinstance(images, ImageInput):
        return [images]
    return list(images)


def _decoded(image: Any, in_channels: int) -> tuple[Any, tuple[int, int]]:
    """An image to prepare (a file is read once here) and its own `(height, width)`."""
    import numpy as np
    import torch
    from PIL import Image

    from torso.data.decode import read_image

    if isinstance(image, str | os.PathLike):
        image = read_image(Path(image), in_channels)
    if isinstance(image, Image.Image):
        return image, (image.height, image.width)
    if isinstance(image, np.ndarray | torch.Tensor) and image.ndim >= 2:
        shape = image.shape[:2] if isinstance(image, np.ndarray) else image.shape[-2:]
        return image, (int(shape[0]), int(shape[1]))
    return image, (0, 0)  # not an image: prepare_images says what is wrong with it


def _original_size_mask(
    mask: torch.Tensor, height: int, width: int, resize: str, ignore_index: int
) -> torch.Tensor:
    """Undo `torso.data.transforms.resize_square` on a predicted `(S, S)` mask: the mask of the
    original `height`×`width` image (nearest). Parts of the image the model did not see (cut off
    by `resize="crop"`) get `ignore_index`."""
    import torch

    from torso.data.transforms import undo_resize_square

    back = undo_resize_square(mask, height, width, resize, fill=ignore_index, mode="nearest-exact")
    return back.to(torch.uint8)


def predict_masks(
    predictor: Predictor,
    paths: Sequence[Any],
    *,
    tta: bool = False,
    batch_size: int = 16,
) -> list[torch.Tensor]:
    """The predicted class mask of each image, uint8 `(H, W)` at the image's own size.

    predictor: a segmentation run's `torso.predictor.Predictor` (`torso.load(run)`); paths:
    image files, or anything else `prepare_images` takes, one image each. Each image is read
    and resized as validation does (`torso.data.prepare.prepare_images`); the predicted
    mask is resized back to the image's size (nearest). With `tta` the class probabilities are
    averaged with those of the mirrored image. A file that cannot be read raises `TorsoError`
    naming it.
    """
    from torso.data.prepare import prepare_images

    config = predictor.config
    ignore_index = predictor.task.options["ignore_index"]
    masks: list[torch.Tensor] = []
    for start in range(0, len(paths), batch_size):
        decoded = [
            _decoded(image, config.in_channels) for image in paths[start : start + batch_size]
        ]
        batch = prepare_images(config, [image for image, _ in decoded])
        probabilities = predictor.activations(batch, tta=tta, batch_size=batch_size)
        for predicted, (_, (height, width)) in zip(
            probabilities.argmax(dim=1), decoded, strict=True
        ):
            masks.append(_original_size_mask(predicted, height, width, config.resize, ignore_index))
    return masks
