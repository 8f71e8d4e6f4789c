"""Building blocks of the dynamic U-Net decoder, each one a small module with plain tensors in/out.

They follow fastai's defaults inside `DynamicUnet` (no normalisation in the decoder's
convolutions, so every convolution has a bias; kaiming-normal weights; ReLU), which is what makes
torso's parameter counts equal fastai's.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm


def init_relu_conv(conv: nn.Conv2d | nn.Conv1d | nn.ConvTranspose2d) -> None:
    """Kaiming-normal weights for a convolution followed by ReLU, zero bias."""
    nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def batch_norm(channels: int) -> nn.BatchNorm2d:
    """BatchNorm with weight 1 and a small positive bias (1e-3), as fastai initialises it."""
    norm = nn.BatchNorm2d(channels)
    nn.init.ones_(norm.weight)
    nn.init.constant_(norm.bias, 1e-3)
    return norm


def conv_layer(
    in_channels: int, out_channels: int, kernel_size: int = 3, *, activation: bool = True
) -> nn.Sequential:
    """Same-padded convolution with bias, then ReLU unless `activation` is False.

    `(N, in_channels, H, W)` → `(N, out_channels, H, W)`.
    """
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
    init_relu_conv(conv)
    layers: list[nn.Module] = [conv]
    if activation:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class Blur(nn.Sequential):
    """Shift by one pixel, then average 2×2 windows: softens sub-pixel checkerboards.

    `(N, C, H, W)` → `(N, C, H, W)`.
    """

    def __init__(self) -> None:
        super().__init__(nn.ReplicationPad2d((1, 0, 1, 0)), nn.AvgPool2d(2, stride=1))


def icnr_(weight: torch.Tensor, scale: int = 2) -> None:
    """Initialise a sub-pixel convolution's weight so that, at first, it upsamples like nearest.

    `weight` has `out_channels * scale**2` filters; a kaiming-normal kernel with `out_channels`
    filters is drawn and each filter is repeated for the `scale**2` sub-pixels that PixelShuffle
    gathers into one output channel (Aitken et al. 2017, "checkerboard artifact free sub-pixel
    convolution").
    """
    out_channels = weight.shape[0] // scale**2
    kernel = torch.empty(out_channels, *weight.shape[1:])
    nn.init.kaiming_normal_(kernel, nonlinearity="relu")
    with torch.no_grad():
        weight.copy_(kernel.repeat_interleave(scale**2, dim=0))


class PixelShuffleUpsample(nn.Module):
    """×2 upsampling by a 1×1 convolution to 4× the channels, ReLU and PixelShuffle (ICNR init).

    `(N, in_channels, H, W)` → `(N, out_channels, 2H, 2W)`; with `blur`, followed by `Blur`.
    """

    def __init__(self, in_channels: int, out_channels: int | None = None, *, blur: bool = False):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.conv = nn.Conv2d(in_channels, out_channels * 4, kernel_size=1)
        icnr_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.shuffle = nn.PixelShuffle(2)
        self.blur = Blur() if blur else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blur(self.shuffle(F.relu(self.conv(x))))


class TransposeUpsample(nn.Module):
    """×2 upsampling by a 2×2 transposed convolution with stride 2, then ReLU.

    `(N, in_channels, H, W)` → `(N, out_channels, 2H, 2W)`; with `blur`, followed by `Blur`.
    """

    def __init__(self, in_channels: int, out_channels: int | None = None, *, blur: bool = False):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.conv = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        init_relu_conv(self.conv)
        self.blur = Blur() if blur else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blur(F.relu(self.conv(x)))


def upsample_layer(
    kind: str, in_channels: int, out_channels: int | None = None, *, blur: bool = False
) -> nn.Module:
    """The ×2 upsampling named by `kind`: "pixelshuffle" (ICNR) or "transpose"."""
    if kind == "pixelshuffle":
        return PixelShuffleUpsample(in_channels, out_channels, blur=blur)
    if kind == "transpose":
        return TransposeUpsample(in_channels, out_channels, blur=blur)
    raise ValueError(f"unknown upsampling {kind!r}")


class SelfAttention(nn.Module):
    """Self-attention over all positions of a feature map (Zhang et al. 2018, SAGAN).

    Query and key project to `channels // 8`, value keeps `channels`; all three are bias-free 1×1
    convolutions with spectral normalisation. The result is scaled by a learned `gamma` that
    starts at 0, so the layer starts as the identity. `(N, C, H, W)` → `(N, C, H, W)`.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.query = self._projection(channels, max(1, channels // 8))
        self.key = self._projection(channels, max(1, channels // 8))
        self.value = self._projection(channels, channels)
        self.gamma = nn.Parameter(torch.zeros(1))

    @staticmethod
    def _projection(in_channels: int, out_channels: int) -> nn.Module:
        conv = nn.Conv1d(in_channels, out_channels, kernel_size=1, bias=False)
        nn.init.kaiming_normal_(conv.weight)
        return spectral_norm(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(2)  # (N, C, HW)
        query, key, value = self.query(flat), self.key(flat), self.value(flat)
        # attention[n, i, j]: how much position j draws from position i (softmax over i)
        attention = torch.softmax(torch.bmm(query.transpose(1, 2), key), dim=1)
        attended = torch.bmm(value, attention)  # (N, C, HW)
        return x + self.gamma * attended.view_as(x)


class ResidualBlock(nn.Module):
    """Two 3×3 convolutions added to the input (through a 1×1 conv + BatchNorm when widths differ).

    `(N, in_channels, H, W)` → `(N, out_channels, H, W)`: `relu(convs(x) + shortcut(x))`, where the
    first convolution has ReLU and the second none.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            conv_layer(in_channels, out_channels),
            conv_layer(out_channels, out_channels, activation=False),
        )
        if in_channels == out_channels:
            self.shortcut: nn.Module = nn.Identity()
        else:
            projection = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
            nn.init.kaiming_normal_(projection.weight)
            self.shortcut = nn.Sequential(projection, batch_norm(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.convs(x) + self.shortcut(x))
