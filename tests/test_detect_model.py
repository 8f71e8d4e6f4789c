"""The detection model: a torso body, a feature pyramid and torchvision's FCOS / RetinaNet."""

from __future__ import annotations

import pytest
import torch

from torso.errors import TorsoError
from torso.models import freeze, param_groups
from torso.models.detection import DetectionModel, PyramidNeck, create_detection_model


def targets():
    return [
        {"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},  # no objects
    ]


@pytest.mark.parametrize(
    ("detector", "losses"),
    [
        ("fcos", {"classification", "bbox_regression", "bbox_ctrness"}),
        ("retinanet", {"classification", "bbox_regression"}),
    ],
)
def test_losses_in_training_and_detections_in_eval(detector, losses):
    torch.manual_seed(0)
    model = create_detection_model("test_resnet", 2, detector=detector, pyramid_channels=64)
    images = torch.rand(2, 3, 64, 64)
    model.train()
    out = model(images)
    assert out.detections is None
    found_losses = out.losses(targets())
    assert set(found_losses) == losses
    sum(found_losses.values()).backward()
    assert model.body.groups()[0][0].grad is not None  # the loss reaches the body
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out.detections) == 2
    for found in out.detections:
        assert set(found) == {"boxes", "scores", "labels"}
        count = found["boxes"].shape[0]
        assert found["boxes"].shape == (count, 4) and found["scores"].shape == (count,)
        assert found["labels"].dtype == torch.int64
        if count:
            assert int(found["labels"].max()) < 2
            assert float(found["boxes"].min()) >= 0 and float(found["boxes"].max()) <= 64


def test_eval_gives_losses_and_detections():
    model = create_detection_model("test_resnet", 1, pyramid_channels=64).eval()
    found = targets()
    found[0]["labels"] = torch.tensor([0])
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 64))
    assert len(out.detections) == 2 and float(sum(out.losses(found).values())) > 0


def test_structure_and_parameter_groups():
    model = create_detection_model("test_resnet", 3, pyramid_channels=64)
    assert isinstance(model, DetectionModel)
    assert isinstance(model.head.backbone, PyramidNeck)
    # the pyramid takes the body's last 3 stages and adds P6 and P7: 5 levels
    assert model.head.backbone.levels == 5
    assert model.head.backbone.fpn.inner_blocks[0][0].in_channels == model.body.channels[-3]
    # FCOS's "anchors" are the strides of the levels: test_resnet's last 3 (8, 16, 32), 64, 128
    assert model.head.anchor_generator.sizes == ((8,), (16,), (32,), (64,), (128,))
    groups = param_groups(model)
    assert len(groups) == len(model.body.groups()) + 1
    head_ids = {id(p) for p in groups[-1]}
    assert head_ids == {id(p) for p in model.head.parameters()}
    everything = sum(p.numel() for group in groups for p in group)
    assert everything == sum(p.numel() for p in model.parameters())


def test_freeze_trains_the_pyramid_and_head_only():
    model = create_detection_model("test_resnet", 1, pyramid_channels=64)
    freeze(model)
    assert all(p.requires_grad for p in model.head.parameters())
    frozen = [
        p
        for name, p in model.body.named_parameters()
        if "bn" not in name and "norm" not in name and p.ndim > 1
    ]
    assert frozen and not any(p.requires_grad for p in frozen)


def test_maxpool_level_and_retinanet_anchors():
    model = create_detection_model(
        "test_resnet", 1, detector="retinanet", extra_levels="maxpool", pyramid_channels=64
    )
    assert model.head.backbone.levels == 4
    assert model.head.anchor_generator.sizes[0] == (32, 40, 50)  # 4 × stride 8, 3 scales


def test_torchvision_body():
    torch.manual_seed(0)
    model = create_detection_model("tv:resnet18", 2, pyramid_channels=64).eval()
    assert model.head.anchor_generator.sizes[0] == (8,)
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 96))
    assert out.detections[0]["boxes"].shape[1] == 4


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"detector": "yolo"}, "detector"),
        ({"extra_levels": "p8"}, "extra_levels"),
        ({"pyramid_channels": 32}, "multiple of 32"),
    ],
)
def test_bad_options(options, message):
    with pytest.raises(TorsoError, match=message):
        create_detection_model("test_resnet", 1, **options)


def test_summary_shows_the_pyramid_levels():
    from torso.tools.summary import summarize

    model = create_detection_model("test_resnet", 2, pyramid_channels=64)
    summary = summarize(model, 64)
    levels = [
        row for row in summary.rows if row.section == "pyramid" and row.name.startswith("level")
    ]
    assert [row.shape for row in levels] == [(64, 8, 8), (64, 4, 4), (64, 2, 2), (64, 1, 1)] + [
        (64, 1, 1)
    ]
    assert summary.head == sum(p.numel() for p in model.head.parameters())


def test_boxes_are_decoded_in_float32_under_bfloat16_autocast():
    model = create_detection_model("test_resnet", 1, pyramid_channels=64).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.rand(1, 3, 64, 64))
    assert out.anchors[0].dtype == torch.float32
    assert out.detections[0]["boxes"].dtype == torch.float32
