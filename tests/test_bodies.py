"""Bodies: shapes, channels and strides for a table of backbones; cuts; first-conv adaptation."""

import pytest
import torch
from torch import nn

from torso.errors import TorsoError, UnknownBackboneError
from torso.models.bodies import adapt_weight, auto_cut, check_backbone_name, create_body

# name, channels per stage, reductions per stage: the published architectures' numbers.
BACKBONES = [
    ("resnet34", [64, 64, 128, 256, 512], [2, 4, 8, 16, 32]),
    ("test_resnet", [32, 32, 48, 192, 96], [2, 4, 8, 16, 32]),
    ("convnext_tiny", [96, 192, 384, 768], [4, 8, 16, 32]),
    ("test_convnext", [24, 32, 48, 64], [4, 8, 16, 32]),
    ("vit_small_patch16_224", [384, 384, 384, 384], [16, 16, 16, 16]),
    ("tf_efficientnet_lite0", [16, 24, 40, 112, 1280], [2, 4, 8, 16, 32]),
    ("mobilenetv3_small_050", [16, 8, 16, 24, 288], [2, 4, 8, 16, 32]),
    ("tv:resnet18", [64, 64, 128, 256, 512], [2, 4, 8, 16, 32]),
    ("tv:densenet121", [64, 256, 512, 1024, 1024], [2, 4, 8, 16, 32]),
    ("tv:vgg11_bn", [64, 128, 256, 512, 512, 512], [1, 2, 4, 8, 16, 32]),
    ("tv:mobilenet_v3_small", [16, 16, 24, 48, 576], [2, 4, 8, 16, 32]),
    ("tv:efficientnet_b0", [16, 24, 40, 112, 1280], [2, 4, 8, 16, 32]),
    ("tv:convnext_tiny", [96, 192, 384, 768], [4, 8, 16, 32]),
    ("tv:regnet_x_400mf", [32, 32, 64, 160, 400], [2, 4, 8, 16, 32]),
]


@pytest.mark.parametrize(("name", "channels", "reductions"), BACKBONES)
def test_body_channels_reductions_and_shapes(name, channels, reductions):
    body = create_body(name).eval()
    assert body.channels == channels
    assert body.reductions == reductions
    assert len(body.stage_names) == len(channels)
    images = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        maps = body.features(images)
        final = body(images)
    assert [m.shape[1] for m in maps] == channels
    for fmap, reduction in zip(maps, reductions, strict=True):
        assert fmap.shape[-2:] == (64 // reduction, 96 // reduction) or reduction > 32
    assert final.shape == (2, channels[-1], 64 // reductions[-1], 96 // reductions[-1])
    torch.testing.assert_close(maps[-1], final)


@pytest.mark.parametrize("name", ["test_resnet", "tv:resnet18", "test_vit"])
def test_groups_partition_the_body(name):
    body = create_body(name)
    groups = body.groups()
    assert len(groups) == 2
    ids = [id(p) for group in groups for p in group]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in body.parameters()}


def test_torchvision_resnet_groups_match_fastai_splitter():
    # fastai's model_meta splits resnet34 at m[0][:6]: 1,347,904 / 19,936,768 parameters.
    sizes = [sum(p.numel() for p in g) for g in create_body("tv:resnet34").groups()]
    assert sizes == [1_347_904, 19_936_768]


def test_stats_come_from_the_weights():
    assert create_body("tv:resnet18").stats == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert create_body("tf_efficientnet_lite0").stats == ((0.5,) * 3, (0.5,) * 3)


def test_body_normalises_inputs_with_its_stats():
    layers = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.MaxPool2d(2))
    stats = ((0.5, 0.25, 0.0), (0.5, 0.5, 2.0))
    body = create_body(nn.Sequential(layers, nn.AdaptiveAvgPool2d(1)), cut=1, stats=stats)
    images = torch.rand(1, 3, 8, 8)
    mean = torch.tensor(stats[0]).view(1, 3, 1, 1)
    std = torch.tensor(stats[1]).view(1, 3, 1, 1)
    expected = body.layers((images - mean) / std)
    torch.testing.assert_close(body(images), expected)


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU())
        self.stage = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.stage(self.stem(x)))))


def test_auto_cut_is_before_the_last_child_with_pooling():
    model = SmallCNN()
    # children: stem, stage (contains MaxPool2d), pool, flatten, fc -> cut before `pool`.
    assert auto_cut(model) == 2
    body = create_body(model)
    assert body.stage_names == ["stem", "stage"]
    assert body.channels == [8, 16]
    assert body.reductions == [2, 4]
    assert body(torch.rand(1, 3, 32, 32)).shape == (1, 16, 8, 8)


def test_module_without_pooling_asks_for_cut():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten())
    with pytest.raises(TorsoError, match="pass cut="):
        create_body(model)
    assert create_body(model, cut=2).channels == [8]


def test_create_body_does_not_change_the_callers_module():
    model = SmallCNN()
    create_body(model, in_channels=1)
    assert model.stem[0].in_channels == 3
    assert model.stem[0].weight.shape[1] == 3


def test_adapt_weight_by_hand():
    weight = torch.arange(2 * 3 * 1 * 1, dtype=torch.float32).view(2, 3, 1, 1)  # [[0,1,2],[3,4,5]]
    one = adapt_weight(weight, 1)
    assert one.view(-1).tolist() == [0 + 1 + 2, 3 + 4 + 5]
    four = adapt_weight(weight, 4)
    assert four.view(2, 4).tolist() == [
        [0 * 0.75, 1 * 0.75, 2 * 0.75, 0 * 0.75],
        [3 * 0.75, 4 * 0.75, 5 * 0.75, 3 * 0.75],
    ]


def test_custom_module_in_channels_sums_rgb_kernels():
    model = SmallCNN()
    body = create_body(model, in_channels=1)
    torch.testing.assert_close(
        body.layers.stem[0].weight, model.stem[0].weight.sum(dim=1, keepdim=True)
    )
    assert body(torch.rand(1, 1, 32, 32)).shape == (1, 16, 8, 8)
    assert body.stats is None


def test_one_channel_stats_average_rgb():
    body = create_body("tv:resnet18", in_channels=1)
    mean, std = body.stats
    assert mean == pytest.approx(((0.485 + 0.456 + 0.406) / 3,))
    assert std == pytest.approx(((0.229 + 0.224 + 0.225) / 3,))
    assert body(torch.rand(1, 1, 64, 64)).shape == (1, 512, 2, 2)


def test_unknown_backbone_suggests_close_names():
    with pytest.raises(UnknownBackboneError, match="resnet34"):
        create_body("resnt34")
    with pytest.raises(UnknownBackboneError, match="tv:"):
        create_body("tv:no_such_net")


@pytest.mark.parametrize("name", ["test_convnext", "mobilenetv3_small_050", "test_vit"])
def test_every_body_parameter_is_used(name):
    # timm keeps parts of a removed head (ConvNeXt's head.norm, MobileNetV3's conv_head); a body
    # must not carry parameters that never train (DDP would have to search for them each step).
    body = create_body(name).eval()
    torch.stack([m.sum() for m in body.features(torch.rand(1, 3, 64, 64))]).sum().backward()
    unused = [n for n, p in body.named_parameters() if p.grad is None]
    assert unused == []


def test_create_body_inside_no_grad():
    # The search for modules a timm body never runs is a backward pass: it must not depend on
    # the caller's grad mode.
    with torch.no_grad():
        body = create_body("test_convnext")
    assert body.dropped == ["head.norm"]
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("name", ["resnet34", "tv:resnet34", "test_vit"])
def test_check_backbone_name_accepts_known_names(name):
    check_backbone_name(name)


@pytest.mark.parametrize("name, close", [("resnt34", "resnet34"), ("tv:resnt34", "tv:resnet34")])
def test_check_backbone_name_suggests_close_names(name, close):
    with pytest.raises(UnknownBackboneError, match=close):
        check_backbone_name(name)
