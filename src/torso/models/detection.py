"""Object detection on any body: a feature pyramid and torchvision's FCOS (or RetinaNet) head.

```
images (N, C, H, W) in [0, 1] ── body.features ──> last 3 stages (strides s, 2s, 4s)
    ── FeaturePyramidNetwork (+ P6/P7 or a max-pooled level) ──> 5 (or 4) maps of D channels
    ── torchvision FCOS / RetinaNet: head, anchors, losses, box decoding and NMS
```

`DetectionModel.body` is the torso body; `DetectionModel.head` is torchvision's detector whose
`backbone` is only the pyramid (`PyramidNeck`: it takes the body's stages, not images), so
`param_groups` is the body's groups plus the pyramid and detector head, and `freeze` works as
for every torso model. Everything detection-specific (heads, box coding, anchor matching, the
losses, NMS) is torchvision's; this module wires the pieces together.

Images are not passed through torchvision's `GeneralizedRCNNTransform`: the body normalises
them (its stats), and the detector sees them at the loader's size, with no resizing and no
padding, so boxes are in the pixels of the images given. (The detector's transform is built
with identity mean/std and is never called.)

`forward(images)` takes images only, as every torso model, and returns a `DetectionOutput`:
the head's raw outputs and anchors, from which `output.losses(targets)` computes the detector's
own loss dict (what `torso.tasks.detect` sums), and in eval mode `output.detections`, one dict
per image `{"boxes": (K, 4) xyxy, "scores": (K,), "labels": (K,)}` (class indices from 0).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models.detection import FCOS, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from torso.errors import TorsoError
from torso.models.bodies import create_body

#: The detectors torchvision provides that take any backbone with `out_channels`.
DETECTORS = ("fcos", "retinanet")
#: Extra pyramid levels above the body's last stage: two strided convolutions (P6, P7, as FCOS
#: and RetinaNet have) or one max-pooled level (as Faster R-CNN's FPN has).
EXTRA_LEVELS = ("p6p7", "maxpool")
#: The body stages the pyramid is built on: the last ones (strides 8, 16, 32 for a ResNet).
PYRAMID_STAGES = 3


class PyramidNeck(nn.Module):
    """The body's last stages → a feature pyramid (`torchvision.ops.FeaturePyramidNetwork`).

    in: a list of maps, shallow to deep (`body.features(x)[-3:]`); out: an OrderedDict of
    `out_channels`-wide maps, finest first ("0", "1", "2", then "p6", "p7" or "pool").
    """

    def __init__(
        self, in_channels: list[int], out_channels: int = 256, extra_levels: str = "p6p7"
    ) -> None:
        super().__init__()
        if extra_levels not in EXTRA_LEVELS:
            raise TorsoError(
                f"extra_levels must be one of {', '.join(EXTRA_LEVELS)}, got {extra_levels!r}"
            )
        extra = (
            LastLevelP6P7(out_channels, out_channels)
            if extra_levels == "p6p7"
            else LastLevelMaxPool()
        )
        self.fpn = FeaturePyramidNetwork(list(in_channels), out_channels, extra_blocks=extra)
        self.out_channels = out_channels  # what torchvision's detectors read
        self.levels = len(in_channels) + (2 if extra_levels == "p6p7" else 1)

    def forward(self, stages: list[torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
        return self.fpn(OrderedDict((str(index), map_) for index, map_ in enumerate(stages)))


@dataclass
class DetectionOutput:
    """What `DetectionModel` returns: the detector head's raw outputs and its anchors, and in
    eval mode the decoded detections.

    detections: one dict per image `{"boxes": (K, 4) xyxy in pixels of the input, "scores":
        (K,), "labels": int64 (K,)}` (class indices from 0), after torchvision's score
        threshold, NMS and top-k; None in training mode.
    `losses(targets)` is the detector's own loss dict (torchvision's `compute_loss`, which
    holds no parameters), for targets `[{"boxes": (K, 4) xyxy, "labels": (K,)}]`.
    """

    head_outputs: dict[str, torch.Tensor]
    anchors: list[torch.Tensor]
    per_level: list[int]
    detector: nn.Module
    detections: list[dict[str, torch.Tensor]] | None = None

    def __len__(self) -> int:
        return len(self.anchors)

    def losses(self, targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """The detector's losses (FCOS: classification, bbox_regression, bbox_ctrness;
        RetinaNet: classification, bbox_regression), each a scalar."""
        device = self.anchors[0].device
        targets = [
            {
                "boxes": target["boxes"].to(device, torch.float32),
                "labels": target["labels"].to(device, torch.int64),
            }
            for target in targets
        ]
        if isinstance(self.detector, FCOS):
            return self.detector.compute_loss(
                targets, self.head_outputs, self.anchors, self.per_level
            )
        return self.detector.compute_loss(targets, self.head_outputs, self.anchors)


class DetectionModel(nn.Module):
    """A torso body + torchvision's detector on a feature pyramid of the body's last stages.

    body: a `torso.models.bodies.Body` (normalises [0, 1] images with its stats).
    head: `torchvision.models.detection.FCOS` or `RetinaNet` whose `backbone` is the
        `PyramidNeck` (fed the body's stages by this model's forward).
    """

    #: `torso summary` shows the pyramid's levels (`summarize_detection`).
    head_takes_pyramid = True

    def __init__(self, body: nn.Module, head: FCOS | RetinaNet) -> None:
        super().__init__()
        self.body = body
        self.head = head

    def forward(self, images: torch.Tensor) -> DetectionOutput:
        """images `(N, C, H, W)` in [0, 1] → a `DetectionOutput` (detections in eval mode)."""
        detector = self.head
        stages = self.body.features(images)[-PYRAMID_STAGES:]
        features = list(detector.backbone(stages).values())
        # decoding and losses in float32: bfloat16 would move a box at x = 500 by 2 pixels
        head_outputs = {key: out.float() for key, out in detector.head(features).items()}
        sizes = [(int(images.shape[-2]), int(images.shape[-1]))] * images.shape[0]
        # the anchors take the maps' dtype: float32 for the same reason
        anchors = detector.anchor_generator(ImageList(images, sizes), [f.float() for f in features])
        per_level = [map_.size(2) * map_.size(3) for map_ in features]
        if isinstance(detector, RetinaNet):  # several anchors per position
            per_position = head_outputs["cls_logits"].size(1) // sum(per_level)
            per_level = [count * per_position for count in per_level]
        output = DetectionOutput(head_outputs, anchors, per_level, detector)
        if not self.training:
            split = {key: list(out.split(per_level, dim=1)) for key, out in head_outputs.items()}
            split_anchors = [list(anchor.split(per_level)) for anchor in anchors]
            output.detections = detector.postprocess_detections(split, split_anchors, sizes)
        return output


def padded_detections(detections: list[dict[str, torch.Tensor]], rows: int) -> torch.Tensor:
    """Detections (one dict per image, best first, as the detectors return them) → one tensor
    `(N, rows, 6)`: x0, y0, x1, y1, score, class index, padded with rows of score 0 and class
    −1. Written without Python-side counts, so a traced graph (ONNX) pads as PyTorch does."""
    tables = []
    for found in detections:
        boxes = found["boxes"].float()
        table = torch.cat(
            [boxes, found["scores"].float()[:, None], found["labels"].to(boxes.dtype)[:, None]], 1
        )
        filler = boxes.new_tensor([0.0, 0.0, 0.0, 0.0, 0.0, -1.0]).expand(rows, 6)
        tables.append(torch.cat([table, filler])[:rows])
    return torch.stack(tables)


class PaddedDetectionModel(nn.Module):
    """A `DetectionModel` whose forward returns `padded_detections(...)`, `(N, rows, 6)`: one
    tensor, post-processing (score threshold, NMS, top-k) included, for ONNX and TorchScript.
    Meant for eval mode (detections exist only there)."""

    def __init__(self, model: DetectionModel, rows: int) -> None:
        super().__init__()
        self.model, self.rows = model, rows

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        output = self.model(images)
        if output.detections is None:
            raise TorsoError("detections are made in eval mode: call model.eval() first")
        return padded_detections(output.detections, self.rows)


def create_detection_model(
    backbone: str | nn.Module,
    num_classes: int,
    *,
    detector: str = "fcos",
    pretrained: bool | str = False,
    in_channels: int = 3,
    pyramid_channels: int = 256,
    extra_levels: str = "p6p7",
    score_threshold: float = 0.05,
    nms_threshold: float = 0.6,
    detections_per_image: int = 100,
) -> DetectionModel:
    """A `DetectionModel` for `num_classes` classes (class indices 0 … num_classes − 1).

    backbone: a name or module for `create_body`, or a ready Body (needs 3 or more stages).
    detector: "fcos" (anchor-free, the default) or "retinanet".
    pyramid_channels: the width of the pyramid and the detector head (for FCOS, whose head
        uses GroupNorm with 32 groups, a multiple of 32 and at least 64).
    score_threshold, nms_threshold, detections_per_image: the detector's post-processing.
    Anchor sizes follow the pyramid's strides: FCOS's one "anchor" per position has the
    level's stride as its size (torchvision's default for strides 8 … 128); RetinaNet's three
    scales start at 4 × the stride (its 32 … 512 for strides 8 … 128).
    """
    if detector not in DETECTORS:
        raise TorsoError(f"detector must be one of {', '.join(DETECTORS)}, got {detector!r}")
    if num_classes < 1:
        raise TorsoError(f"detection needs at least one class, got {num_classes}")
    if detector == "fcos" and (pyramid_channels % 32 or pyramid_channels < 64):
        # GroupNorm(32) must see 2 values a group even on a 1x1 level of one image
        raise TorsoError(
            f"pyramid_channels must be a multiple of 32 and at least 64, got {pyramid_channels}"
        )
    body = (
        backbone
        if hasattr(backbone, "features") and hasattr(backbone, "channels")
        else create_body(backbone, pretrained=pretrained, in_channels=in_channels)
    )
    channels, reductions = list(body.channels), list(body.reductions)
    if len(channels) < PYRAMID_STAGES:
        raise TorsoError(
            f"backbone {getattr(body, 'name', backbone)!r} has {len(channels)} stages; a feature "
            f"pyramid needs at least {PYRAMID_STAGES}"
        )
    neck = PyramidNeck(channels[-PYRAMID_STAGES:], pyramid_channels, extra_levels)
    strides = [int(r) for r in reductions[-PYRAMID_STAGES:]]
    while len(strides) < neck.levels:
        strides.append(strides[-1] * 2)
    common = {
        "num_classes": num_classes,
        "image_mean": [0.0] * in_channels,  # the body normalises
        "image_std": [1.0] * in_channels,
        "score_thresh": score_threshold,
        "nms_thresh": nms_threshold,
        "detections_per_img": detections_per_image,
    }
    if detector == "fcos":
        anchors = AnchorGenerator(tuple((s,) for s in strides), ((1.0,),) * len(strides))
        head = FCOS(neck, anchor_generator=anchors, **common)
    else:
        scales = tuple(tuple(int(4 * s * 2 ** (i / 3)) for i in range(3)) for s in strides)
        anchors = AnchorGenerator(scales, ((0.5, 1.0, 2.0),) * len(strides))
        head = RetinaNet(neck, anchor_generator=anchors, **common)
    return DetectionModel(body, head)
