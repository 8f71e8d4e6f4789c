"""Semantic segmentation: a class for every pixel, with a U-Net decoder on the body.

Batches are `(images (N, C, H, W), masks int64 (N, H, W))` (`torso.data.load_data(path,
task="segment")`); mask pixels equal to `ignore_index` (255, "void") count for nothing. The model
is `torso.models.segmentation.DynamicUnet(body, num_classes)`, or with
`architecture="unet2015"` the 2015 paper's `UNet2015` with padded convolutions; either way its
outputs are class scores (logits) `(N, num_classes, H, W)` at the image's size.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassF1Score,
    MulticlassJaccardIndex,
)

from torso.errors import TorsoError
from torso.tasks.base import Task

#: Smoothing of the soft Dice loss, in pixels: keeps classes absent from an image from
#: dividing by zero and makes the loss of an empty class whose prediction is empty about zero.
DICE_SMOOTHING = 1.0
#: Model architectures of the task: a decoder on any body, or the 2015 paper's U-Net.
ARCHITECTURES = ("dynamic_unet", "unet2015")


def metric_name(class_name: str) -> str:
    """A class name as a metric-column suffix: letters, digits and `_` only (`"road sign"` →
    `"road_sign"`)."""
    return re.sub(r"\W+", "_", str(class_name)).strip("_") or "class"


def soft_dice_loss(
    scores: torch.Tensor, targets: torch.Tensor, ignore_index: int, per_sample: bool
) -> torch.Tensor:
    """1 − the soft Dice coefficient, averaged over classes; void pixels are left out.

    scores: logits `(N, K, H, W)`; targets: class ids `(N, H, W)`. Returns a scalar over the
    whole batch, or `(N,)` with `per_sample`.
    """
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
    the truth or the prediction) and `dice_<class>` per class; `mean_iou` (intersection over
    union averaged over the classes present, the main metric). Dice and IoU are computed over
    all validation pixels together, not averaged image by image.

    Options:
        ignore_index: the mask value of pixels without a class (255).
        dice_weight: weight of the soft Dice loss added to the cross-entropy (0: none).
        decoder_width: cap on the U-Net decoder's widths (`DynamicUnet(decoder_width=...)`);
            None keeps fastai's widths.
        self_attention: a self-attention layer in the decoder, as fastai's option.
        architecture: "dynamic_unet" (a U-Net decoder on the backbone's body) or "unet2015"
            (the paper's U-Net, `UNet2015(padding=True)`: its own contracting path instead of
            the backbone, random weights only; padded so its scores have the image's size, where
            the paper's unpadded network would give a map 184 pixels smaller).
    """

    name = "segment"
    main_metric = "mean_iou"
    higher_is_better = True

    def __init__(
        self,
        ignore_index: int = 255,
        dice_weight: float = 0.0,
        decoder_width: int | None = None,
        self_attention: bool = False,
        architecture: str = "dynamic_unet",
    ) -> None:
        if isinstance(ignore_index, bool) or not 0 <= int(ignore_index) <= 255:
            raise TorsoError(f"ignore_index must be between 0 and 255, got {ignore_index}")
        if not 0 <= dice_weight < float("inf"):
            raise TorsoError(f"dice_weight must be 0 or more, got {dice_weight}")
        if decoder_width is not None and int(decoder_width) < 2:
            raise TorsoError(f"decoder_width must be at least 2, got {decoder_width}")
        if architecture not in ARCHITECTURES:
            raise TorsoError(
                f"architecture must be one of {', '.join(ARCHITECTURES)}, got {architecture!r}"
            )
        if architecture == "unet2015" and (decoder_width is not None or self_attention):
            raise TorsoError("decoder_width and self_attention are options of dynamic_unet")
        super().__init__(
            ignore_index=int(ignore_index),
            dice_weight=float(dice_weight),
            decoder_width=int(decoder_width) if decoder_width is not None else None,
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
    def head_options(self, config: dict[str, Any]) -> dict[str, Any]:
        """`DynamicUnet` keyword arguments: the config's `head_options` and this task's options."""
        options = super().head_options(config)
        if self.options["decoder_width"] is not None:
            options.setdefault("decoder_width", self.options["decoder_width"])
        if self.options["self_attention"]:
            options.setdefault("self_attention", True)
        if isinstance(options.get("y_range"), list):
            options["y_range"] = tuple(options["y_range"])
        return options

    def build_model(self, config: dict[str, Any], *, pretrained: bool | str = False) -> nn.Module:
        """`DynamicUnet(create_body(backbone), num_outputs, ...)` from a `torso.json` config, or
        `UNet2015(in_channels, num_outputs, padding=True)` (backbone not used)."""
        from torso.models.bodies import create_body
        from torso.models.segmentation import DynamicUnet, UNet2015

        if self.options.get("architecture", "dynamic_unet") == "unet2015":
            if pretrained is not False:
                raise TorsoError("UNet2015 has no pretrained weights: train it from random ones")
            return UNet2015(
                int(config.get("in_channels", 3)), int(config["num_outputs"]), padding=True
            )

        body = create_body(
            config["backbone"],
            pretrained=pretrained,
            in_channels=int(config.get("in_channels", 3)),
        )
        return DynamicUnet(body, int(config["num_outputs"]), **self.head_options(config))

    # -- training ----------------------------------------------------------------------------
    def loss(
        self, outputs: torch.Tensor, targets: torch.Tensor, reduction: str = "mean"
    ) -> torch.Tensor:
        """Mean cross-entropy over the non-void pixels (+ `dice_weight` × soft Dice loss).

        `outputs (N, K, H, W)`, `targets (N, H, W)`; `reduction="none"` gives one value per image
        (its own non-void pixels), `"sum"` the sum of those.
        """
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

    def metrics(self, config: dict[str, Any]) -> dict[str, Metric]:
        num_classes = int(config["num_outputs"])
        ignore_index = self.options["ignore_index"]
        common = {"num_classes": num_classes, "ignore_index": ignore_index, "validate_args": False}
        metrics: dict[str, Metric] = {
            "pixel_accuracy": MulticlassAccuracy(average="micro", **common),
            "dice": MulticlassF1Score(average="macro", **common),
            "mean_iou": MulticlassJaccardIndex(average="macro", **common),
        }
        names = config.get("classes") or [str(index) for index in range(num_classes)]
        for index, class_name in enumerate(names[:num_classes]):
            key = f"dice_{metric_name(class_name)}"
            if key in metrics:
                key = f"{key}_{index}"
            metrics[key] = MulticlassF1Score(average="none", **common)[index]
        return metrics

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
        """The share of the image's pixels given to each class: `{"<class>": 0.71, ...}`."""
        num_classes = activations.shape[1]
        names = classes or [str(index) for index in range(num_classes)]
        records = []
        for mask in self.decode(activations):
            counts = torch.bincount(mask.reshape(-1), minlength=num_classes).double()
            shares = counts / max(mask.numel(), 1)
            records.append(
                {name: round(float(share), 6) for name, share in zip(names, shares, strict=True)}
            )
        return records


def _original_size_mask(
    mask: torch.Tensor, height: int, width: int, resize: str, ignore_index: int
) -> torch.Tensor:
    """Undo `torso.data.transforms.resize_square` on a predicted `(S, S)` mask: the mask of the
    original `height`×`width` image (nearest). Parts of the image the model did not see (cut off
    by `resize="crop"`) get `ignore_index`."""
    size = mask.shape[-1]
    if resize == "crop":
        # The image was scaled so its short side is `size`, then its centre cut out (torchvision
        # rounds the offsets): put the mask back in the middle, void around it.
        scale = size / min(height, width)
        scaled = (max(size, round(height * scale)), max(size, round(width * scale)))
        top, left = round((scaled[0] - size) / 2), round((scaled[1] - size) / 2)
        region = torch.full(scaled, ignore_index, dtype=mask.dtype)
        region[top : top + size, left : left + size] = mask
    elif resize == "pad":
        # The image was scaled so its long side is `size`, then padded around: cut the pad off.
        scale = size / max(height, width)
        scaled = (
            max(1, min(size, round(height * scale))),
            max(1, min(size, round(width * scale))),
        )
        top, left = (size - scaled[0]) // 2, (size - scaled[1]) // 2
        region = mask[top : top + scaled[0], left : left + scaled[1]]
    else:
        region = mask
    resized = F.interpolate(region[None, None].float(), size=(height, width), mode="nearest-exact")
    return resized[0, 0].to(torch.uint8)


@torch.no_grad()
def predict_masks(
    model: nn.Module,
    config: dict[str, Any],
    paths: list[Any],
    *,
    tta: bool = False,
    batch_size: int = 16,
    device: str | torch.device | None = None,
) -> list[torch.Tensor]:
    """The predicted class mask of each image file, uint8 `(H, W)` at the file's own size.

    model: a segmentation model (`torso.train.checkpoint.load_model` of a run trained with task
    segment); config: its `torso.json` (gives `size`, `in_channels`, `resize`). Each image is
    read as validation reads it, resized to the model's size; the predicted mask is resized back
    to the image's size (nearest). With `tta` the class probabilities are averaged with those of
    the mirrored image. A file that cannot be read raises `TorsoError` naming it.
    """
    from torso.data import read_image
    from torso.data.transforms import resize_square

    if config.get("task") != SegmentTask.name:
        raise TorsoError(
            f"mask prediction needs a model trained with --task segment; "
            f"this one is {config.get('task')!r}"
        )
    size = config.get("size")
    if size is None:
        raise TorsoError("this model's torso.json has no image size")
    size = int(size[0] if isinstance(size, list) else size)
    channels = int(config.get("in_channels", 3))
    resize = config.get("resize", "squish")
    ignore_index = int((config.get("task_options") or {}).get("ignore_index", 255))
    device = torch.device(device or "cpu")
    was_training = model.training
    model.eval()
    masks: list[torch.Tensor] = []
    try:
        for start in range(0, len(paths), batch_size):
            images, sizes = [], []
            for path in paths[start : start + batch_size]:
                image = read_image(path, channels)
                sizes.append(tuple(image.shape[-2:]))
                images.append(resize_square(image, size, resize)[0])
            batch = torch.stack(images).to(device=device, dtype=torch.float32).div_(255.0)
            probabilities = model(batch).float().softmax(dim=1)
            if tta:
                mirrored = model(batch.flip(-1)).float().softmax(dim=1).flip(-1)
                probabilities = (probabilities + mirrored) / 2
            for predicted, (height, width) in zip(
                probabilities.argmax(dim=1).cpu(), sizes, strict=True
            ):
                masks.append(_original_size_mask(predicted, height, width, resize, ignore_index))
    finally:
        model.train(was_training)
    return masks
