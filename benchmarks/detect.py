"""Detection: torso's detect task vs a plain PyTorch loop around torchvision's FCOS, side by side.

Both train FCOS on the same body for the same epochs, on the same images, and are then measured
by the same metric:

* data: the nuclei tiles of `torso demo detect` (`torso.data.demo.write_nuclei_boxes`, 117
  training tiles, 4 validation tiles), read once by torso's `load_data` (task detect, no
  augmentation) into in-memory batches that both contenders train on, in the same order;
* models: one body (`--backbone`, the packaged ImageNet weights with `--pretrained`), copied;
  torso's `create_detection_model` (its `PyramidNeck` and torchvision's FCOS head) and, for the
  plain loop, torchvision's own `FCOS` on a `FeaturePyramidNetwork` over the same body stages,
  with the transform told not to resize (`min_size = max_size = --size`, identity mean and std:
  the body normalises). The plain model starts from torso's pyramid and head weights, so the
  two start equal;
* training: AdamW at a constant `--lr`, every parameter trained; torso through its `Learner`
  (`fit(1, lr)` a block), the plain loop as torchvision's detectors are trained
  (`sum(model(images, targets).values())`). A block is one epoch; the warm-up epoch trains too,
  so each trains `--warmup + --rounds` epochs;
* measured: training images per second (interleaved epochs, benchmarks/harness.py), and mAP
  (COCO mAP .5:.95 and mAP@.5, torchmetrics) of each final model on the validation tiles.

Targets: training speed >= 1.0x the plain loop; mAP equal or better.

    python benchmarks/detect.py --pretrained            # 128 px, batch 16, 1 + 8 epochs
    python benchmarks/detect.py --quick
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import harness
import torch
from contenders import ImageCounter, adamw, parameters, torso_block
from torch import nn
from torchvision.models.detection import FCOS
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from torso.data import load_data
from torso.data.demo import write_nuclei_boxes
from torso.models.bodies import create_body
from torso.models.detection import PYRAMID_STAGES, create_detection_model
from torso.tasks import get_task
from torso.train.learner import Learner, set_seed


class BodyPyramid(nn.Module):
    """A torso body's last stages through torchvision's FeaturePyramidNetwork with P6/P7: the
    backbone torchvision's FCOS expects (`out_channels`, an OrderedDict of maps)."""

    def __init__(self, body: nn.Module, channels: int):
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(
            list(body.channels[-PYRAMID_STAGES:]),
            channels,
            extra_blocks=LastLevelP6P7(channels, channels),
        )
        self.out_channels = channels

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        stages = self.body.features(images)[-PYRAMID_STAGES:]
        return self.fpn(OrderedDict((str(i), stage) for i, stage in enumerate(stages)))


def plain_fcos(torso_model: nn.Module, classes: int, size: int, channels: int) -> FCOS:
    """torchvision's FCOS on a copy of torso's body, starting from torso's pyramid and head."""
    body = copy.deepcopy(torso_model.body)
    model = FCOS(
        BodyPyramid(body, channels),
        classes,
        min_size=size,
        max_size=size,
        image_mean=[0.0, 0.0, 0.0],
        image_std=[1.0, 1.0, 1.0],
        score_thresh=0.05,
        nms_thresh=0.6,
        detections_per_img=100,
    )
    model.backbone.fpn.load_state_dict(torso_model.head.backbone.fpn.state_dict())
    model.head.load_state_dict(torso_model.head.head.state_dict())
    return model


def plain_block(model: FCOS, optimizer, batches) -> Callable[[], int]:
    def block() -> int:
        model.train()
        images = 0
        for x, targets in batches:
            losses = model(list(x), targets)
            sum(losses.values()).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            images += len(targets)
        return images

    return block


@torch.inference_mode()
def mean_average_precision(predict, batches) -> tuple[float, float]:
    """(mAP .5:.95, mAP@.5) of `predict(x) -> list of {"boxes", "scores", "labels"}`."""
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(box_format="xyxy")
    for x, targets in batches:
        found = [{k: v.detach() for k, v in d.items()} for d in predict(x)]
        truth = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
        metric.update(found, truth)
    values = metric.compute()
    return float(values["map"]), float(values["map_50"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_arguments(parser, rounds=8)
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--pretrained", action="store_true", help="the packaged body weights")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--pyramid-channels", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args(argv)
    limit = None
    if args.quick:
        args.backbone, args.pretrained, args.size, args.batch_size = "test_resnet", False, 64, 4
        args.rounds, limit = min(args.rounds, 2), 2
    harness.start(args)
    with tempfile.TemporaryDirectory() as temporary:
        folder = write_nuclei_boxes(Path(temporary) / "nuclei-boxes")
        dls = load_data(
            folder,
            task="detect",
            size=args.size,
            batch_size=args.batch_size,
            num_workers=0,
            augment=False,
            seed=0,
        )
        train = list(dls.train)[:limit]
        valid = list(dls.valid)[:limit]
    classes = len(dls.classes)

    set_seed(0)
    body = create_body(args.backbone, pretrained=args.pretrained)
    torso_model = create_detection_model(
        body, classes, pyramid_channels=args.pyramid_channels, detections_per_image=100
    )
    plain_model = plain_fcos(torso_model, classes, args.size, args.pyramid_channels)
    task = get_task("detect", pyramid_channels=args.pyramid_channels)
    counter = ImageCounter()
    learner = Learner(torso_model, train, None, task=task, callbacks=[counter])
    contenders = []
    if harness.wanted(args, "torso"):
        block = torso_block(learner, counter, args.lr)
        contenders.append(harness.Contender("torso detect", block))
    if harness.wanted(args, "plain"):
        block = plain_block(plain_model, adamw(plain_model, args.lr), train)
        contenders.append(harness.Contender("plain FCOS loop", block))
    images = sum(len(targets) for _, targets in train)
    title = (
        f"Detection: FCOS on {args.backbone} ({'pretrained' if args.pretrained else 'random'} "
        f"body), {args.size} px, batch {args.batch_size}, pyramid {args.pyramid_channels}, "
        f"{images} training images an epoch, {args.warmup} + {args.rounds} epochs"
    )
    head = harness.header(
        title,
        contenders,
        data="the same in-memory batches (nuclei tiles)",
        trained_parameters=f"torso {parameters(torso_model):,}, plain {parameters(plain_model):,}",
    )
    print(head)
    if not contenders:
        harness.publish(args, head + "\n\nno contender selected")
        return
    result = harness.measure(contenders, args.rounds, warmup=args.warmup)

    torso_model.eval()
    plain_model.eval()
    accuracy = {}
    if harness.wanted(args, "torso"):
        accuracy["torso detect"] = mean_average_precision(
            lambda x: torso_model(x).detections, valid
        )
    if harness.wanted(args, "plain"):
        accuracy["plain FCOS loop"] = mean_average_precision(lambda x: plain_model(list(x)), valid)
    extra = {
        name: {"mAP .5:.95": f"{values[0]:.3f}", "mAP@.5": f"{values[1]:.3f}"}
        for name, values in accuracy.items()
    }
    parts = [head, harness.rate_table(result, extra)]
    parts.append(harness.ratio_table(result, [("torso detect", "plain FCOS loop", 1.0)]))
    if len(accuracy) == 2:
        difference = accuracy["torso detect"][0] - accuracy["plain FCOS loop"][0]
        verdict = "met" if difference >= 0 else "MISSED (by the difference; 4 tiles: noisy)"
        parts.append(f"- mAP .5:.95 torso - plain: {difference:+.3f} (target >= 0: {verdict})")
    parts.append(harness.footer())
    harness.publish(args, "\n\n".join(parts))


if __name__ == "__main__":
    main()
