"""The original U-Net of Ronneberger, Fischer and Brox (2015), shape for shape.

"U-Net: Convolutional Networks for Biomedical Image Segmentation", MICCAI 2015, figure 1. Built
from the paper's description, not from a library: no padding, no BatchNorm, no pretrained
encoder. Because every 3×3 convolution is unpadded, the output is smaller than the input and
only some input sizes fit the 2×2 poolings evenly; `unet2015_valid_sizes` lists them and
`unet2015_output_size` says what comes out.

Like every torso model it is a body and a head: `model.body` is the contracting path (a Body
whose stages are the five levels; it has no pretrained weights and no normalisation stats) and
`model.head` the expanding path, which receives the image and the five levels' maps. With
`padding=True` (what `torso train --task segment --architecture unet2015` uses) the same layers
pad their convolutions, so the output has the input's size and any side of 16 pixels or more
works; the parameter count does not change.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from torso.errors import TorsoError
from torso.models.bodies.body import Body

#: Channels of the five levels, top (full resolution) to bottom.
LEVEL_CHANNELS = (64, 128, 256, 512, 1024)
_POOLINGS = len(LEVEL_CHANNELS) - 1
_SHRINK_PER_CONV_PAIR = 4  # two unpadded 3×3 convolutions lose 2 pixels each
#: Smallest side the padded network takes: the bottom map is then 1×1.
MIN_PADDED_SIDE = 2**_POOLINGS


def _trace_sizes(size: int) -> list[int] | None:
    """Side length after every step of the network for an input side `size`, or None.

    None when a 2×2 max-pooling would meet an odd side or a side drops to zero or below.
    """
    sizes = [size]
    for _ in range(_POOLINGS):
        size -= _SHRINK_PER_CONV_PAIR
        if size <= 0 or size % 2:
            return None
        sizes.append(size)
        size //= 2
        sizes.append(size)
    size -= _SHRINK_PER_CONV_PAIR  # the bottom level
    if size <= 0:
        return None
    sizes.append(size)
    for _ in range(_POOLINGS):
        size = size * 2 - _SHRINK_PER_CONV_PAIR
        if size <= 0:
            return None
        sizes.append(size)
    return sizes


def unet2015_output_size(size: int) -> int:
    """Side length of the output map for an input side `size` (572 → 388).

    The output is always `size - 184` for a valid size. Raises TorsoError for a size the
    network cannot take, naming the nearest sizes that work.
    """
    sizes = _trace_sizes(size)
    if sizes is None:
        raise TorsoError(_invalid_size_message(size))
    return sizes[-1]


def unet2015_valid_sizes(minimum: int = 1, maximum: int = 1024) -> list[int]:
    """Input side lengths between `minimum` and `maximum` (inclusive) that UNet2015 takes.

    They are the sizes `16k + 124` from 188 on: 188, 204, …, 572, 588, … Each pre-pooling map
    must have an even side and the bottom map a positive one.
    """
    return [size for size in range(max(1, minimum), maximum + 1) if _trace_sizes(size) is not None]


def _nearest_valid_sizes(size: int) -> list[int]:
    below = [s for s in unet2015_valid_sizes(max(1, size - 64), size) if s < size]
    above = [s for s in unet2015_valid_sizes(size + 1, max(size + 64, 252))]
    return below[-1:] + above[:1]


def _invalid_size_message(size: int) -> str:
    nearest = " or ".join(str(s) for s in _nearest_valid_sizes(size))
    return (
        f"UNet2015 cannot take an input side of {size} pixels: its sides must be 16k + 124 "
        f"(188, 204, …, 572, …); the nearest that work are {nearest}"
    )


def _conv_pair(in_channels: int, out_channels: int, padding: int = 0) -> nn.Sequential:
    """Two 3×3 convolutions, each followed by ReLU: unpadded, the side shrinks by 4."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=padding),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=padding),
        nn.ReLU(inplace=True),
    )


def _center_crop(skip: torch.Tensor, height: int, width: int) -> torch.Tensor:
    top = (skip.shape[-2] - height) // 2
    left = (skip.shape[-1] - width) // 2
    return skip[..., top : top + height, left : left + width]


def _pad_to(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Zero-pad `x` (bottom and right) to `height`×`width`: an odd side lost a row to pooling."""
    return F.pad(x, (0, width - x.shape[-1], 0, height - x.shape[-2]))


class UNet2015Encoder(Body):
    """The contracting path: image `(N, in_channels, H, W)` → five maps, one a level.

    `features(images)` returns the four levels' maps before their pooling (64, 128, 256, 512
    channels) and the bottom map (1024 channels); `forward` returns the bottom map. Reductions
    are nominal (1, 2, 4, 8, 16): unpadded, each map is also a few pixels smaller. No stats:
    images go in as they are.
    """

    def __init__(self, in_channels: int = 1, *, padding: bool = False) -> None:
        super().__init__(
            "unet2015",
            in_channels,
            None,
            LEVEL_CHANNELS,
            [2**level for level in range(len(LEVEL_CHANNELS))],
            [f"contracting.{level}" for level in range(_POOLINGS)] + ["bottom"],
        )
        pad = 1 if padding else 0
        down_widths = (in_channels, *LEVEL_CHANNELS[:-2])
        self.contracting = nn.ModuleList(
            _conv_pair(c_in, c_out, pad)
            for c_in, c_out in zip(down_widths, LEVEL_CHANNELS[:-1], strict=True)
        )
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.bottom = _conv_pair(LEVEL_CHANNELS[-2], LEVEL_CHANNELS[-1], pad)

    @property
    def trunk(self) -> nn.Module:
        return self

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        maps = []
        x = images
        for level in self.contracting:
            x = level(x)
            maps.append(x)
            x = self.pool(x)
        return [*maps, self.bottom(x)]

    def groups(self) -> list[list[nn.Parameter]]:
        """One group: the contracting path is trained from scratch, never fine-tuned in parts."""
        return [list(self.parameters())]


class UNet2015Decoder(nn.Module):
    """The expanding path: `(images, the encoder's five maps)` → class scores.

    From the bottom map up: a 2×2 transposed convolution with stride 2 halves the channels and
    doubles the side, the level's map is joined (centre-cropped to the upsampled side when
    unpadded; with padding the upsampled map is zero-padded to the level's side when pooling
    dropped an odd row), two 3×3 convolutions; last a 1×1 convolution to the classes.
    `images` is not used by the layers; it is there so that every segmentation head is called
    the same way, `head(images, body.features(images))`.
    """

    def __init__(self, num_classes: int = 2, *, padding: bool = False) -> None:
        super().__init__()
        self.padding = padding
        pad = 1 if padding else 0
        deep_to_shallow = LEVEL_CHANNELS[::-1]  # 1024, 512, 256, 128, 64
        self.up_convolutions = nn.ModuleList(
            nn.ConvTranspose2d(c_in, c_in // 2, kernel_size=2, stride=2)
            for c_in in deep_to_shallow[:-1]
        )
        self.expanding = nn.ModuleList(
            _conv_pair(c_in, c_out, pad)
            for c_in, c_out in zip(deep_to_shallow[:-1], deep_to_shallow[1:], strict=True)
        )
        self.classifier = nn.Conv2d(LEVEL_CHANNELS[0], num_classes, kernel_size=1)

    def forward(self, images: torch.Tensor, features: Sequence[torch.Tensor]) -> torch.Tensor:
        *skips, x = features
        for up, level, skip in zip(
            self.up_convolutions, self.expanding, reversed(skips), strict=True
        ):
            x = up(x)
            if self.padding:
                x = _pad_to(x, skip.shape[-2], skip.shape[-1])
            else:
                skip = _center_crop(skip, x.shape[-2], x.shape[-1])
            x = level(torch.cat([skip, x], dim=1))
        return self.classifier(x)


class UNet2015(nn.Module):
    """The U-Net of the 2015 paper: `(N, in_channels, H, W)` → `(N, num_classes, H-184, W-184)`.

    Shapes for the paper's 1×572×572 input (channels×side), walked in order:

        level 1   1×572 → 64×570 → 64×568 ................ skip, cropped to 64×392
        pool      64×284
        level 2   128×282 → 128×280 ...................... skip, cropped to 128×200
        pool      128×140
        level 3   256×138 → 256×136 ...................... skip, cropped to 256×104
        pool      256×68
        level 4   512×66 → 512×64 ........................ skip, cropped to 512×56
        pool      512×32
        bottom    1024×30 → 1024×28
        up 4      up-conv 512×56, concat 1024×56 → 512×54 → 512×52
        up 3      up-conv 256×104, concat 512×104 → 256×102 → 256×100
        up 2      up-conv 128×200, concat 256×200 → 128×198 → 128×196
        up 1      up-conv 64×392, concat 128×392 → 64×390 → 64×388
        output    1×1 conv → 2×388

    Each level runs two unpadded 3×3 convolutions with ReLU (side − 4); going down is 2×2 max
    pooling; going up is a 2×2 transposed convolution with stride 2 that halves the channels; the
    skip map is centre-cropped to the upsampled side and concatenated before the level's
    convolutions; a final 1×1 convolution maps 64 channels to the classes. With the defaults the
    network has 31,030,658 parameters, as in the paper.

    `model.body` is the contracting path (levels 1–4 and the bottom, a `UNet2015Encoder`) and
    `model.head` the expanding path (a `UNet2015Decoder`), so parameter groups and freezing work
    as for any torso model: two groups, the contracting path then the expanding path.

    Valid input sides are `16k + 124` (see `unet2015_valid_sizes`); height and width may differ.
    Other sides raise TorsoError naming the nearest valid ones.

    padding: False is the paper's network. True pads every 3×3 convolution by one pixel (same
    layers, same parameter count): the output has the input's size `(N, num_classes, H, W)` and
    any side of at least 16 pixels works. That is how the segmentation task trains it, on the
    square images its loaders give, with masks of the same size.
    """

    #: the head is called as `head(images, body.features(images))` (see torso.tools.summary)
    head_takes_features = True

    def __init__(self, in_channels: int = 1, num_classes: int = 2, *, padding: bool = False):
        super().__init__()
        if in_channels < 1 or num_classes < 1:
            raise TorsoError(
                f"UNet2015 needs in_channels >= 1 and num_classes >= 1, "
                f"got in_channels={in_channels}, num_classes={num_classes}"
            )
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.padding = padding
        self.body = UNet2015Encoder(in_channels, padding=padding)
        self.head = UNet2015Decoder(num_classes, padding=padding)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class scores for images `(N, in_channels, H, W)`: `(N, num_classes, H - 184, W - 184)`,
        or `(N, num_classes, H, W)` with padding."""
        if images.ndim != 4 or images.shape[1] != self.in_channels:
            raise TorsoError(
                f"UNet2015 expects images of shape (N, {self.in_channels}, H, W), "
                f"got {tuple(images.shape)}"
            )
        for side in images.shape[-2:]:
            if self.padding and int(side) < MIN_PADDED_SIDE:
                raise TorsoError(
                    f"UNet2015 with padding needs sides of at least {MIN_PADDED_SIDE} pixels "
                    f"(four 2×2 poolings), got {int(side)}"
                )
            if not self.padding and _trace_sizes(int(side)) is None:
                raise TorsoError(_invalid_size_message(int(side)))
        return self.head(images, self.body.features(images))
