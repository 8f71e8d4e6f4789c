"""DynamicUnet: fastai parity in parameters, shapes on many bodies, export, errors, layers."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn

from torso.errors import TorsoError
from torso.models import count_parameters, freeze, param_groups, upgrade_state_dict
from torso.models.bodies import create_body
from torso.models.segmentation import DynamicUnet, UnetDecoder
from torso.models.segmentation.dynamic_unet import skip_stages
from torso.models.segmentation.layers import PixelShuffleUpsample, SelfAttention


@pytest.fixture(scope="module")
def resnet34_body():
    return create_body("tv:resnet34")


@pytest.fixture(scope="module")
def tiny_body():
    return create_body("test_resnet")


# fastai 2.8.12, DynamicUnet(create_body(resnet34), 3, (224, 224), ...): see REFERENCE.md §1.7.
@pytest.mark.parametrize(
    "options, total",
    [
        ({}, 41_221_268),
        ({"self_attention": True}, 41_405_589),
        ({"last_cross": False}, 41_044_643),
        ({"blur": True, "y_range": (0.0, 1.0)}, 41_221_268),
        # fastai counts 41,114,967 here, but its final 1×1 conv is still built for 99 channels
        # and its forward fails on the 49 the bottlenecked block gives; ours takes 49 channels.
        ({"bottle": True}, 41_114_967 - (99 - 49) * 3),
    ],
)
def test_parameter_counts_equal_fastai_on_resnet34(resnet34_body, options, total):
    model = DynamicUnet(resnet34_body, 3, **options)
    assert count_parameters(model.body) == 21_284_672
    assert count_parameters(model) == total


def test_decoder_parts_match_fastai_layer_by_layer(resnet34_body):
    decoder = DynamicUnet(resnet34_body, 3).decoder
    assert count_parameters(decoder.norm) == 1_024
    assert count_parameters(decoder.middle) == 9_438_720
    assert [count_parameters(block) for block in decoder.blocks] == [
        5_245_440,
        3_180_544,
        1_475_968,
        380_736,
    ]
    assert count_parameters(decoder.extra_upsample) == 37_248
    assert count_parameters(decoder.cross_block) == 176_616
    assert count_parameters(decoder.classifier) == 300


def test_resnet50_design_is_339m_and_decoder_width_caps_it():
    body = create_body("tv:resnet50")
    with torch.device("meta"):  # 339M parameters without allocating them
        uncapped = DynamicUnet(body, 3)
        capped = DynamicUnet(body, 3, decoder_width=256)
    assert count_parameters(uncapped) == 339_070_292
    assert count_parameters(capped.decoder) == 7_449_124
    # The cap halves at each level nearer the image: smp's Unet widths.
    assert capped.decoder.middle[1][0].out_channels == 256
    assert [block.convs[1][0].out_channels for block in capped.decoder.blocks] == [128, 64, 32, 16]
    widths = [m.out_channels for m in capped.decoder.modules() if isinstance(m, nn.Conv2d)]
    # Sub-pixel convolutions make 4 × their output channels before PixelShuffle.
    assert max(widths) <= 4 * 256


def test_decoder_width_never_narrows_below_16_or_widens():
    body = create_body("test_resnet")  # channels 32, 32, 48, 192, 96
    decoder = DynamicUnet(body, 2, decoder_width=64).decoder
    assert decoder.middle[0][0].out_channels == 64 and decoder.middle[1][0].out_channels == 64
    assert [block.convs[1][0].out_channels for block in decoder.blocks] == [32, 16, 16, 16]
    narrow = DynamicUnet(body, 2, decoder_width=8).decoder
    assert [block.convs[1][0].out_channels for block in narrow.blocks] == [8, 8, 8, 8]


def test_the_decoder_is_planned_from_the_body_metadata(resnet34_body):
    assert skip_stages([2, 4, 8, 16, 32]) == [3, 2, 1, 0]
    assert skip_stages([4, 8, 16, 32]) == [2, 1, 0]
    assert skip_stages([16, 16, 16, 16]) == []
    assert skip_stages([2, 2, 4, 4, 8]) == [3, 1]
    model = DynamicUnet(resnet34_body, 3)
    assert len(model.decoder.blocks) == 4
    assert len(model.decoder.extra_upsample) == 1


def test_extra_upsampling_after_the_first_step_halves_the_channels():
    vit = DynamicUnet(create_body("test_vit"), 2).decoder  # 64 channels at ÷16
    assert len(vit.blocks) == 0
    widths = [step.conv.out_channels // 4 for step in vit.extra_upsample]
    assert widths == [64, 32, 16, 16]
    assert vit.cross_block.convs[0][0].in_channels == 16 + 3


# One square and one non-square size per body; 48 and 80 are not multiples of 32, so odd maps are
# matched by resizing. Real timm/torchvision architectures keep decoder_width small for speed.
@pytest.mark.parametrize(
    "backbone, options, extra_steps",
    [
        ("test_resnet", {}, 1),
        ("test_convnext", {}, 2),
        ("test_vit", {}, 4),
        ("test_efficientnet", {}, 1),
        ("tv:resnet18", {"decoder_width": 64}, 1),
        ("tv:mobilenet_v3_small", {"decoder_width": 64}, 1),
        ("convnext_tiny", {"decoder_width": 64}, 2),
        ("tf_efficientnet_lite0", {"decoder_width": 64}, 1),
    ],
)
def test_output_size_equals_input_size_on_many_bodies(backbone, options, extra_steps):
    model = DynamicUnet(create_body(backbone), 4, **options)
    assert len(model.decoder.extra_upsample) == extra_steps
    for height, width in ((64, 64), (48, 80)):
        out = model(torch.rand(2, 3, height, width))
        assert out.shape == (2, 4, height, width)
        assert torch.isfinite(out).all()


def test_any_size_the_body_takes_comes_back_at_that_size(tiny_body):
    model = DynamicUnet(tiny_body, 2).eval()
    for height, width in ((200, 300), (33, 47), (17, 128)):
        assert model(torch.rand(1, 3, height, width)).shape == (1, 2, height, width)


@pytest.mark.parametrize(
    "options",
    [{"upsample": "transpose"}, {"self_attention": True, "blur": True}, {"last_cross": False}],
)
def test_variants_run_and_train(tiny_body, options):
    model = DynamicUnet(tiny_body, 3, **options)
    images, masks = torch.rand(2, 3, 64, 48), torch.randint(0, 3, (2, 64, 48))
    loss = nn.functional.cross_entropy(model(images), masks)
    loss.backward()
    assert all(p.grad is not None for p in model.decoder.parameters() if p.requires_grad)


def test_transpose_upsampling_uses_transposed_convolutions(tiny_body):
    model = DynamicUnet(tiny_body, 3, upsample="transpose")
    kinds = {type(m) for m in model.decoder.modules()}
    assert nn.ConvTranspose2d in kinds and nn.PixelShuffle not in kinds


def test_y_range_bounds_the_output(tiny_body):
    model = DynamicUnet(tiny_body, 1, y_range=(-1.0, 2.0)).eval()
    out = model(torch.rand(2, 3, 32, 32) * 50)
    assert out.min() >= -1.0 and out.max() <= 2.0


def test_one_channel_images_are_crossed_with_one_channel():
    grey = DynamicUnet(create_body("test_resnet", in_channels=1), 2)
    colour = DynamicUnet(create_body("test_resnet"), 2)
    assert grey(torch.rand(2, 1, 32, 32)).shape == (2, 2, 32, 32)
    crossed = [model.decoder.cross_block.convs[0][0].in_channels for model in (grey, colour)]
    assert crossed[1] - crossed[0] == 2


def test_model_is_body_then_decoder_for_groups_and_freezing(tiny_body):
    model = DynamicUnet(tiny_body, 3)
    assert model.body is tiny_body and isinstance(model.head, UnetDecoder)
    groups = param_groups(model)
    assert {id(p) for p in groups[-1]} == {id(p) for p in model.decoder.parameters()}
    assert sum(len(g) for g in groups) == len(list(model.parameters()))
    freeze(model, train_bn=False)
    assert all(p.requires_grad for p in model.decoder.parameters())
    assert not any(p.requires_grad for p in model.body.parameters())


def test_state_dict_has_body_and_head_keys_and_loads_old_sequential_ones():
    model = DynamicUnet(create_body("test_resnet"), 3).eval()
    assert not isinstance(model, nn.Sequential)
    state = model.state_dict()
    assert {key.split(".")[0] for key in state} == {"body", "head"}
    old = {
        ("0." if k.startswith("body.") else "1.") + k.split(".", 1)[1]: v for k, v in state.items()
    }
    fresh = DynamicUnet(create_body("test_resnet"), 3).eval()
    fresh.load_state_dict(upgrade_state_dict(old), strict=True)
    images = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(fresh(images), model(images))


def test_nothing_is_hooked_or_kept_between_calls(tiny_body):
    model = DynamicUnet(tiny_body, 3).eval()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    first, second = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 64, 96)
    out_first = model(first)
    model(second)
    assert torch.equal(model(first), out_first)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    after = model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_torch_export_gives_the_same_output_at_other_sizes(tiny_body):
    model = DynamicUnet(tiny_body, 3).eval()
    batch = torch.export.Dim("batch", min=1, max=16)
    height, width = torch.export.Dim("height", min=1, max=16), torch.export.Dim("width", max=16)
    exported = torch.export.export(
        model,
        (torch.rand(2, 3, 64, 96),),
        dynamic_shapes={"images": {0: batch, 2: 32 * height, 3: 32 * width}},
    )
    images = torch.rand(3, 3, 128, 160)
    assert torch.allclose(exported.module()(images), model(images), atol=1e-5)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning")
def test_onnx_export_matches_pytorch_in_onnxruntime(tiny_body):
    onnxruntime = pytest.importorskip("onnxruntime")
    model = DynamicUnet(tiny_body, 3).eval()
    images = torch.rand(2, 3, 64, 96)
    buffer = io.BytesIO()
    # The TorchScript-based exporter: the dynamo exporter needs onnxscript, not a dependency.
    torch.onnx.export(
        model, (images,), buffer, dynamo=False, input_names=["images"], output_names=["scores"]
    )
    session = onnxruntime.InferenceSession(buffer.getvalue())
    (scores,) = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        expected = model(images).numpy()
    assert scores.shape == (2, 3, 64, 96)
    assert np.abs(scores - expected).max() < 1e-4


def test_an_input_the_body_cannot_take_names_sizes_that_work():
    model = DynamicUnet(create_body("test_convnext"), 2).eval()
    with pytest.raises(TorsoError, match=r"cannot take 3x3 images.*32x32"):
        model(torch.rand(1, 3, 3, 3))
    model = DynamicUnet(create_body("test_vit"), 2).eval()
    with pytest.raises(TorsoError, match=r"cannot take 20x40 images.*16x32"):
        model(torch.rand(1, 3, 20, 40))


def test_a_failure_that_no_size_fixes_is_not_blamed_on_the_size(tiny_body):
    model = DynamicUnet(tiny_body, 2).eval()
    with pytest.raises(RuntimeError, match="[Dd]ouble") as caught:
        model(torch.rand(1, 3, 64, 64, dtype=torch.float64))
    assert not isinstance(caught.value, TorsoError)


def test_wrong_channels_and_bad_arguments_are_named(tiny_body):
    model = DynamicUnet(tiny_body, 2)
    with pytest.raises(TorsoError, match=r"\(N, 3, H, W\), got \(1, 1, 32, 32\)"):
        model(torch.rand(1, 1, 32, 32))
    with pytest.raises(TorsoError, match="float images"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(TorsoError, match="upsample"):
        DynamicUnet(tiny_body, 2, upsample="bilinear")
    with pytest.raises(TorsoError, match="num_classes"):
        DynamicUnet(tiny_body, 0)
    with pytest.raises(TorsoError, match="y_range"):
        DynamicUnet(tiny_body, 2, y_range=(1.0, 0.0))
    with pytest.raises(TorsoError, match="Body"):
        DynamicUnet(nn.Conv2d(3, 8, 3), 2)


def test_icnr_upsampling_starts_as_nearest_neighbour():
    upsample = PixelShuffleUpsample(8, 4)
    out = upsample(torch.randn(2, 8, 5, 7))
    top_left = out[..., ::2, ::2]
    for dy, dx in ((0, 1), (1, 0), (1, 1)):
        assert torch.equal(out[..., dy::2, dx::2], top_left)


def test_self_attention_starts_as_identity_and_has_fastai_parameter_count():
    attention = SelfAttention(384)
    x = torch.randn(2, 384, 3, 5)
    assert torch.equal(attention(x), x)
    assert count_parameters(attention) == 184_321  # the difference 41,405,589 − 41,221,268
