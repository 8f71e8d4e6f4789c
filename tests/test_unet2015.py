"""UNet2015: the paper's network, shape for shape and parameter for parameter."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torso.errors import TorsoError
from torso.models.segmentation import UNet2015, unet2015_output_size, unet2015_valid_sizes


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
    x = torch.empty(1, 1, 572, 572, device="meta")
    down = []
    for level in model.contracting:
        x = level(x)
        down.append(tuple(x.shape[1:]))
        x = model.pool(x)
    x = model.bottom(x)
    assert down == [(64, 568, 568), (128, 280, 280), (256, 136, 136), (512, 64, 64)]
    assert tuple(x.shape[1:]) == (1024, 28, 28)
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
