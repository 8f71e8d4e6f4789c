"""UNet2015: the paper's network, shape for shape and parameter for parameter."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torso.config import RunConfig
from torso.errors import TorsoError
from torso.models import freeze, param_groups
from torso.models.bodies import Body
from torso.models.segmentation import UNet2015, unet2015_output_size, unet2015_valid_sizes
from torso.tasks import get_task


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_count_is_the_papers():
    assert count(UNet2015()) == 31_030_658
    # in/out channels only change the first and the last convolution
    assert count(UNet2015(in_channels=3, num_classes=5)) == 31_030_658 + 2 * 64 * 9 + 3 * 65


def test_layers_are_unpadded_convs_and_2x2_up_convolutions():
    model = UNet2015()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 19  # 9 levels × 2 convolutions + the 1×1 classifier
    assert all(conv.padding == (0, 0) for conv in convs)
    assert [conv.out_channels for conv in convs[:10:2]] == [64, 128, 256, 512, 1024]
    ups = [m for m in model.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [(up.in_channels, up.out_channels) for up in ups] == [
        (1024, 512),
        (512, 256),
        (256, 128),
        (128, 64),
    ]
    assert all(up.kernel_size == (2, 2) and up.stride == (2, 2) for up in ups)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("size, output", [(572, 388), (188, 4), (204, 20), (588, 404)])
def test_output_size(size, output):
    assert unet2015_output_size(size) == output


def test_valid_sizes_are_16k_plus_124():
    sizes = unet2015_valid_sizes(1, 600)
    assert sizes[0] == 188 and 572 in sizes
    assert sizes == list(range(188, 601, 16))
    assert all((size - 124) % 16 == 0 for size in sizes)


def test_forward_shapes_at_small_valid_sizes():
    model = UNet2015(in_channels=1, num_classes=2)
    out = model(torch.rand(1, 1, 188, 204))
    assert out.shape == (1, 2, 4, 20)


def test_paper_shapes_level_by_level_at_572():
    # On the meta device the shapes are computed without any arithmetic: the 572 pass is free.
    model = UNet2015().to("meta")
    maps = model.body.features(torch.empty(1, 1, 572, 572, device="meta"))
    assert [tuple(m.shape[1:]) for m in maps] == [
        (64, 568, 568),
        (128, 280, 280),
        (256, 136, 136),
        (512, 64, 64),
        (1024, 28, 28),
    ]
    assert model(torch.empty(1, 1, 572, 572, device="meta")).shape == (1, 2, 388, 388)


@pytest.mark.parametrize("size, nearest", [(200, "188 or 204"), (572 + 8, "572 or 588")])
def test_invalid_sizes_name_the_nearest_valid_ones(size, nearest):
    with pytest.raises(TorsoError, match=f"{size} pixels.*{nearest}"):
        unet2015_output_size(size)
    model = UNet2015()
    with pytest.raises(TorsoError, match=nearest):
        model(torch.rand(1, 1, 188, size))


def test_wrong_channels_are_named():
    with pytest.raises(TorsoError, match=r"\(N, 1, H, W\), got \(1, 3, 188, 188\)"):
        UNet2015()(torch.rand(1, 3, 188, 188))


def test_body_is_the_contracting_path_and_head_the_expanding_path():
    model = UNet2015()
    assert isinstance(model.body, Body) and not isinstance(model, nn.Sequential)
    assert count(model.body) == 18_842_048  # levels 1-4 and the bottom
    assert count(model.head) == 12_188_610  # up-convolutions, levels 4-1 up, the 1×1 classifier
    assert model.body.channels == [64, 128, 256, 512, 1024]
    assert [count_params(group) for group in param_groups(model)] == [18_842_048, 12_188_610]
    freeze(model)
    assert not any(p.requires_grad for p in model.body.parameters())
    assert all(p.requires_grad for p in model.head.parameters())


def count_params(params) -> int:
    return sum(p.numel() for p in params)


@pytest.mark.parametrize("height, width", [(64, 64), (100, 75), (16, 17)])
def test_padding_keeps_the_input_size_with_the_same_parameters(height, width):
    model = UNet2015(in_channels=3, num_classes=4, padding=True)
    assert count(model) == count(UNet2015(in_channels=3, num_classes=4))
    assert all(conv.padding == (1, 1) for conv in model.modules() if conv_3x3(conv))
    assert model(torch.rand(1, 3, height, width)).shape == (1, 4, height, width)


def conv_3x3(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.kernel_size == (3, 3)


def test_padded_network_refuses_sides_below_16():
    with pytest.raises(TorsoError, match="at least 16 pixels"):
        UNet2015(padding=True)(torch.rand(1, 1, 15, 32))


def test_segment_task_builds_unet2015_from_a_config():
    task = get_task("segment", architecture="unet2015")
    config = RunConfig(task="segment", backbone="resnet34", num_outputs=3, size=48, in_channels=1)
    model = task.build_model(config)
    assert isinstance(model, UNet2015) and model.padding
    assert model.in_channels == 1 and model.num_classes == 3
    images, masks = torch.rand(2, 1, 48, 48), torch.randint(0, 3, (2, 48, 48))
    scores = model(images)
    assert scores.shape == (2, 3, 48, 48)  # the masks' size: the task's loss takes it as it is
    assert task.loss(scores, masks).ndim == 0
    with pytest.raises(TorsoError, match="no pretrained weights"):
        task.build_model(config, pretrained=True)


def test_segment_task_checks_its_architecture():
    with pytest.raises(TorsoError, match="dynamic_unet, unet2015"):
        get_task("segment", architecture="unet")
    with pytest.raises(TorsoError, match="options of dynamic_unet"):
        get_task("segment", architecture="unet2015", decoder_width=64)
