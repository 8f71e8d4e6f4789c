"""A U-Net decoder that fits itself to any body, with the body's features passed explicitly.

The design is fastai's `DynamicUnet` (same layers, same defaults, same parameter counts), with one
difference in how the decoder reaches the body's intermediate maps: fastai registers forward hooks
on the encoder and reads what they stored during the last call; here the body returns its maps as
a list (`body.features(images)`) and the decoder takes that list as an argument. Nothing is stored
between calls, so the model works with `torch.export`, ONNX export, `torch.compile` and DDP, and
the decoder is planned from the body's metadata (`channels`, `reductions`), not a dummy pass.

    image ─► body ─► [f1 (÷2), f2 (÷4), f3 (÷8), f4 (÷16), f5 (÷32)]
                                                              │
              BatchNorm, ReLU, middle convs (C → 2C → C) ◄────┘
              block: ×2 up, cat BatchNorm(f4), 2 convs
              block: ×2 up, cat BatchNorm(f3), 2 convs
              block: ×2 up, cat BatchNorm(f2), 2 convs
              block: ×2 up, cat BatchNorm(f1), 2 convs (halves the channels)
              ×2 up per remaining halving (one for ÷2, two for ÷4, four for ÷16;
                  the second and later halve the channels)
              resize to the image's size, cat the image, residual block
              1×1 conv to the classes (→ sigmoid range)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from torso.errors import TorsoError
from torso.models.bodies import Body
from torso.models.heads import SigmoidRange
from torso.models.segmentation.layers import (
    ResidualBlock,
    SelfAttention,
    batch_norm,
    conv_layer,
    upsample_layer,
)

UPSAMPLE_KINDS = ("pixelshuffle", "transpose")
#: Narrowest level width a `decoder_width` cap halves down to.
MIN_CAPPED_WIDTH = 16


class UnetBlock(nn.Module):
    """One decoder step: upsample ×2, concatenate the normalised skip map, two 3×3 convolutions.

    `x (N, up_channels, h, w)`, `skip (N, skip_channels, H, W)` → `(N, out_channels, H, W)`.
    The upsampled map is resized (nearest) to the skip's size when they differ (odd sizes).
    """

    def __init__(
        self,
        up_channels: int,
        skip_channels: int,
        out_channels: int,
        *,
        upsample: str = "pixelshuffle",
        blur: bool = False,
        self_attention: bool = False,
    ) -> None:
        super().__init__()
        self.upsample = upsample_layer(upsample, up_channels, up_channels // 2, blur=blur)
        self.skip_norm = batch_norm(skip_channels)
        merged = up_channels // 2 + skip_channels
        self.convs = nn.Sequential(
            conv_layer(merged, out_channels),
            conv_layer(out_channels, out_channels),
            SelfAttention(out_channels) if self_attention else nn.Identity(),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = self.upsample(x)
        if up.shape[-2:] != skip.shape[-2:]:
            up = F.interpolate(up, size=skip.shape[-2:], mode="nearest")
        # fastai applies ReLU to the whole concatenation; the upsampled half already went
        # through a ReLU (and nearest resizing or blurring keeps it non-negative), so only the
        # skip half needs one: the same numbers for less work.
        return self.convs(torch.cat([up, F.relu(self.skip_norm(skip))], dim=1))


def skip_stages(reductions: Sequence[int]) -> list[int]:
    """Indices of the feature maps the decoder concatenates, deepest first.

    One per resolution shallower than the last map: the deepest (last) map at each reduction,
    as fastai takes the last layer before each change of size. `[2, 4, 8, 16, 32]` → `[3, 2, 1, 0]`;
    a transformer's `[16, 16, 16, 16]` → `[]`.
    """
    deepest = reductions[-1]
    last_at: dict[int, int] = {}
    for index, reduction in enumerate(reductions):
        if reduction < deepest:
            last_at[reduction] = index
    return [last_at[reduction] for reduction in sorted(last_at, reverse=True)]


class UnetDecoder(nn.Module):
    """The decoder half of `DynamicUnet`: `(image, features)` → class scores at the image's size.

    Args:
        channels, reductions: the body's `channels` and `reductions`, one entry per feature map.
        in_channels: channels of the image (concatenated by the last cross connection).
        num_classes: output channels.
        The rest: see `DynamicUnet`.

    `forward(image (N, in_channels, H, W), features)` → `(N, num_classes, H, W)`, where `features`
    is the list `body.features(image)` returns.
    """

    def __init__(
        self,
        channels: Sequence[int],
        reductions: Sequence[int],
        in_channels: int,
        num_classes: int,
        *,
        upsample: str = "pixelshuffle",
        blur: bool = False,
        blur_final: bool = True,
        self_attention: bool = False,
        y_range: tuple[float, float] | None = None,
        last_cross: bool = True,
        bottle: bool = False,
        decoder_width: int | None = None,
    ) -> None:
        super().__init__()

        def capped(width: int, level: int) -> int:
            # Level 0 is the middle block, each upsampling block one level nearer the image.
            if decoder_width is None:
                return width
            return min(width, max(decoder_width >> level, min(MIN_CAPPED_WIDTH, decoder_width)))

        deepest = channels[-1]
        middle_width = capped(2 * deepest, 0)
        width = capped(deepest, 0)
        self.norm = batch_norm(deepest)
        self.middle = nn.Sequential(
            conv_layer(deepest, middle_width), conv_layer(middle_width, width)
        )

        self.skip_indices = skip_stages(reductions)
        count = len(self.skip_indices)
        # fastai puts self-attention in the third block from the end.
        attention_at = max(0, count - 3) if self_attention else -1
        blocks = []
        for position, index in enumerate(self.skip_indices):
            final = position == count - 1
            merged = width // 2 + channels[index]
            out_width = capped(merged // 2 if final else merged, position + 1)
            blocks.append(
                UnetBlock(
                    width,
                    channels[index],
                    out_width,
                    upsample=upsample,
                    blur=blur and (not final or blur_final),
                    self_attention=position == attention_at,
                )
            )
            width = out_width
        self.blocks = nn.ModuleList(blocks)
        self.middle_attention = (
            SelfAttention(width) if self_attention and count == 0 else nn.Identity()
        )

        # The shallowest map the decoder reached is still smaller than the image when the body's
        # first stage already downsamples: ×2 steps until it is at (about) full resolution. The
        # first keeps the width (fastai's one extra step); later ones, which only bodies starting
        # at ÷4 or coarser need, halve it so full resolution is not computed at ViT widths.
        extra_upsample = []
        for step in range(max(0, round(math.log2(min(reductions))))):
            out_width = width if step == 0 else max(width // 2, min(MIN_CAPPED_WIDTH, width))
            extra_upsample.append(upsample_layer(upsample, width, out_width))
            width = out_width
        self.extra_upsample = nn.Sequential(*extra_upsample)
        self.last_cross = last_cross
        if last_cross:
            crossed = width + in_channels
            out_width = crossed // 2 if bottle else crossed
            self.cross_block: nn.Module = ResidualBlock(crossed, out_width)
            width = out_width
        else:
            self.cross_block = nn.Identity()
        self.classifier = nn.Conv2d(width, num_classes, kernel_size=1)
        self.output_range = SigmoidRange(*y_range) if y_range is not None else nn.Identity()

    def forward(self, image: torch.Tensor, features: Sequence[torch.Tensor]) -> torch.Tensor:
        x = self.middle(F.relu(self.norm(features[-1])))
        x = self.middle_attention(x)
        for block, index in zip(self.blocks, self.skip_indices, strict=True):
            x = block(x, features[index])
        x = self.extra_upsample(x)
        if x.shape[-2:] != image.shape[-2:]:
            x = F.interpolate(x, size=image.shape[-2:], mode="nearest")
        if self.last_cross:
            x = self.cross_block(torch.cat([x, image], dim=1))
        return self.output_range(self.classifier(x))


class DynamicUnet(nn.Module):
    """A U-Net on any body: `(N, C, H, W)` images in [0, 1] → `(N, num_classes, H, W)` scores.

    `model.body` is the body and `model.head` (also `model.decoder`) the `UnetDecoder`, so
    `torso.models.param_groups`, `freeze` and `unfreeze` treat it like any body + head model
    (body groups, then the decoder as the last group). The head receives every stage, not only
    the final map: forward computes `features = model.body.features(images)` and returns
    `model.head(images, features)`.

    Args:
        body: a `torso.models.bodies.Body`; its `channels` and `reductions` plan the decoder.
        num_classes: output channels (classes for cross-entropy).
        upsample: "pixelshuffle" (1×1 conv + PixelShuffle, ICNR-initialised, fastai's default) or
            "transpose" (2×2 transposed convolution).
        blur: blur after each upsampling to soften checkerboard artefacts; `blur_final` says
            whether the last block blurs too.
        self_attention: a self-attention layer in the third block from the end, as fastai.
        y_range: `(low, high)` squashes the output with a sigmoid into that range.
        last_cross: concatenate the input image at full resolution and run a residual block.
        bottle: halve the channels in that residual block.
        decoder_width: cap on the decoder's widths, halved at each level nearer the image. The
            middle block is at most `decoder_width` wide, the first upsampling block at most half
            of it, the next a quarter, and so on down to 16 (256 → 256, 128, 64, 32, 16: the
            widths of smp's Unet decoder). fastai's design doubles the body's last width in the
            middle block (2048 → 4096 → 2048 on a resnet50: 339M parameters) and keeps ~100
            channels at full resolution, where most of its computation goes; capped at 256, a
            resnet50 decoder has 7.4M parameters and a fraction of the work.
            None keeps fastai's widths exactly.

    With `torso.create_body("tv:resnet34")` and 3 classes the model has 41,221,268 parameters,
    as fastai's `DynamicUnet` on the same body.
    Inputs of any size the body takes come out at the same size (200×300 → 200×300); maps of odd
    sizes are matched by nearest resizing. An input the body cannot take raises TorsoError
    naming nearby sizes that work.
    """

    #: the head is called as `head(images, body.features(images))` (see torso.tools.summary)
    head_takes_features = True

    def __init__(
        self,
        body: Body,
        num_classes: int,
        *,
        upsample: str = "pixelshuffle",
        blur: bool = False,
        blur_final: bool = True,
        self_attention: bool = False,
        y_range: tuple[float, float] | None = None,
        last_cross: bool = True,
        bottle: bool = False,
        decoder_width: int | None = None,
    ) -> None:
        _check_arguments(body, num_classes, upsample, y_range, decoder_width)
        decoder = UnetDecoder(
            body.channels,
            body.reductions,
            body.in_channels,
            num_classes,
            upsample=upsample,
            blur=blur,
            blur_final=blur_final,
            self_attention=self_attention,
            y_range=y_range,
            last_cross=last_cross,
            bottle=bottle,
            decoder_width=decoder_width,
        )
        super().__init__()
        self.body = body
        self.head = decoder
        self.num_classes = num_classes

    @property
    def decoder(self) -> UnetDecoder:
        """The decoder, `model.head`."""
        return self.head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class scores `(N, num_classes, H, W)` for images `(N, in_channels, H, W)`."""
        body = self.body
        if images.ndim != 4 or images.shape[1] != body.in_channels:
            raise TorsoError(
                f"DynamicUnet on {body.name} expects images of shape "
                f"(N, {body.in_channels}, H, W), got {tuple(images.shape)}"
            )
        if not images.is_floating_point():
            raise TorsoError(
                f"DynamicUnet expects float images with values in [0, 1], got {images.dtype}"
            )
        if torch.compiler.is_compiling():
            features = body.features(images)
        else:
            try:
                features = body.features(images)
            except (RuntimeError, ValueError, AssertionError) as error:
                if isinstance(error, torch.OutOfMemoryError):
                    raise
                height, width = int(images.shape[-2]), int(images.shape[-1])
                working = sizes_that_work(body, height, width, like=images)
                if not working:  # not a matter of size: the body's own error says more
                    raise
                raise TorsoError(
                    _unfit_size_message(body, height, width, working, error)
                ) from error
        return self.head(images, features)


def _check_arguments(
    body: object,
    num_classes: int,
    upsample: str,
    y_range: tuple[float, float] | None,
    decoder_width: int | None,
) -> None:
    if not isinstance(body, Body):
        raise TorsoError(
            f"DynamicUnet needs a torso Body (from torso.create_body), got {type(body).__name__}"
        )
    if num_classes < 1:
        raise TorsoError(f"num_classes must be at least 1, got {num_classes}")
    if upsample not in UPSAMPLE_KINDS:
        raise TorsoError(f"upsample must be one of {', '.join(UPSAMPLE_KINDS)}, got {upsample!r}")
    if y_range is not None and (len(y_range) != 2 or not y_range[0] < y_range[1]):
        raise TorsoError(f"y_range must be (low, high) with low < high, got {y_range!r}")
    if decoder_width is not None and decoder_width < 2:
        raise TorsoError(f"decoder_width must be at least 2, got {decoder_width}")


def _unfit_size_message(
    body: Body, height: int, width: int, working: list[tuple[int, int]], error: Exception
) -> str:
    sizes = ", ".join(f"{h}x{w}" for h, w in working)
    return (
        f"body {body.name} cannot take {height}x{width} images ({str(error).splitlines()[0]}); "
        f"sizes near it that work: {sizes}"
    )


@torch.no_grad()
def sizes_that_work(
    body: Body, height: int, width: int, count: int = 2, *, like: torch.Tensor | None = None
) -> list[tuple[int, int]]:
    """Up to `count` input sizes near `height`×`width` that `body` accepts, nearest first.

    Tries multiples of the body's deepest reduction around each side with one dummy image each
    (eval mode, restored afterwards; on the device and dtype of `like` when given), so it costs
    a few forward passes.
    """
    stride = max(body.reductions)
    sides = {}
    for name, side in (("height", height), ("width", width)):
        below = max(stride, side // stride * stride)
        sides[name] = sorted(
            {max(stride, below + k * stride) for k in range(-1, 4)}, key=lambda s: abs(s - side)
        )
    candidates = sorted(
        {(h, w) for h in sides["height"] for w in sides["width"]},
        key=lambda hw: (abs(hw[0] - height) + abs(hw[1] - width), hw),
    )
    was_training = body.training
    body.eval()
    found = []
    try:
        for h, w in candidates:
            if (h, w) == (height, width):
                continue
            try:
                if like is None:
                    body.features(torch.zeros(1, body.in_channels, h, w))
                else:
                    body.features(like.new_zeros(1, body.in_channels, h, w))
            except (RuntimeError, ValueError, AssertionError):
                continue
            found.append((h, w))
            if len(found) == count:
                break
    finally:
        body.train(was_training)
    return found
