"""The Body: a backbone cut before its pooling and classifier, image in, feature maps out."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

Stats = tuple[tuple[float, ...], tuple[float, ...]]


def adapt_stats(stats: Stats | None, in_channels: int) -> Stats | None:
    """Mean/std for `in_channels` inputs from RGB stats.

    One channel gets the average of the three (its pretrained kernel is the sum of the RGB
    kernels, so it sees a grey image as the RGB network saw it); more channels repeat R, G, B in
    order, matching how the first convolution's kernels are repeated.
    """
    if stats is None or len(stats[0]) == in_channels:
        return stats
    mean, std = stats
    if in_channels == 1:
        return (sum(mean) / len(mean),), (sum(std) / len(std),)
    return (
        tuple(mean[i % len(mean)] for i in range(in_channels)),
        tuple(std[i % len(std)] for i in range(in_channels)),
    )


def split_in_two(count: int) -> int:
    """Where early stages end: after the first ceil(count / 2) of `count` ordered units.

    For torchvision ResNets, DenseNets, VGGs, SqueezeNets and AlexNet this reproduces fastai's
    hand-written splitters exactly (counted in parameters).
    """
    return max(1, math.ceil(count / 2))


class Body(nn.Module):
    """Image → feature maps, with the facts a head or decoder needs to fit itself to it.

    Input: float images `(N, in_channels, H, W)` with values in [0, 1]; the body normalises them
    with `stats` first (once, inside the model, so loaders and exported models need not).

    Attributes:
        name: the backbone's name, e.g. `"resnet34"` (timm) or `"tv:resnet34"` (torchvision).
        in_channels: channels of the input images.
        channels: channels of each stage's feature map, shallow to deep.
        reductions: stride of each stage's feature map relative to the input.
        stage_names: the module name each stage's map is taken from.
        stats: `(mean, std)` of the weights' training data, or None (no normalisation).
    """

    def __init__(
        self,
        name: str,
        in_channels: int,
        stats: Stats | None,
        channels: Sequence[int],
        reductions: Sequence[int],
        stage_names: Sequence[str],
    ) -> None:
        super().__init__()
        self.name = name
        self.in_channels = in_channels
        self.stats = stats
        self.channels = list(channels)
        self.reductions = list(reductions)
        self.stage_names = list(stage_names)
        if stats is not None:
            mean = torch.tensor(stats[0], dtype=torch.float32).view(1, -1, 1, 1)
            std = torch.tensor(stats[1], dtype=torch.float32).view(1, -1, 1, 1)
            # Not persistent: the state dict stays the backbone's own; stats travel in torso.json.
            self.register_buffer("mean", mean, persistent=False)
            self.register_buffer("std", std, persistent=False)
        else:
            self.mean = None
            self.std = None

    @property
    def num_features(self) -> int:
        """Channels of the final feature map (what a classification head receives)."""
        return self.channels[-1]

    @property
    def trunk(self) -> nn.Module:
        """The module whose submodules `stage_names` name."""
        raise NotImplementedError

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """`(images - mean) / std` with this body's stats; identity when it has none."""
        if self.mean is None:
            return images
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps at every stage, shallow to deep; the last equals `self(images)`."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Final feature map `(N, channels[-1], H / reductions[-1], W / reductions[-1])`."""
        return self.features(images)[-1]

    def groups(self) -> list[list[nn.Parameter]]:
        """Parameter groups, early stages first, for discriminative learning rates."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"name={self.name!r}, in_channels={self.in_channels}, channels={self.channels}"


class SequentialBody(Body):
    """A body made of an ordered list of stage-level modules run one after another.

    Used for torchvision backbones (cut by torso's registry) and user modules (cut by index, by a
    function, or before the last child that contains a pooling layer). A stage's map is the
    output of the last module before the spatial size changes, found once by a dummy forward pass.
    """

    def __init__(
        self,
        layers: nn.Sequential,
        *,
        name: str,
        in_channels: int,
        stats: Stats | None,
        split: int | None = None,
    ) -> None:
        stage_indices, channels, reductions = _find_stages(layers, in_channels)
        names = [name for name, _ in layers.named_children()]
        super().__init__(
            name,
            in_channels,
            stats,
            channels,
            reductions,
            [names[i] for i in stage_indices],
        )
        self.layers = layers
        self.stage_indices = stage_indices
        if split is None:
            split = stage_indices[split_in_two(len(stage_indices)) - 1] + 1
        self.split = split

    @property
    def trunk(self) -> nn.Module:
        return self.layers

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = self.normalize(images)
        maps = []
        wanted = set(self.stage_indices)
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index in wanted:
                maps.append(x)
        return maps

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(self.normalize(images))

    def groups(self) -> list[list[nn.Parameter]]:
        early = [p for layer in self.layers[: self.split] for p in layer.parameters()]
        late = [p for layer in self.layers[self.split :] for p in layer.parameters()]
        return [group for group in (early, late) if group]


def _find_stages(layers: nn.Sequential, in_channels: int) -> tuple[list[int], list[int], list[int]]:
    """Indices of the children whose output is a stage's map, their channels and reductions.

    A dummy forward pass at growing sizes (128, 256, 512 px) until the network accepts one, as
    fastai does, instead of a table of shapes.
    """
    error: Exception | None = None
    for size in (128, 256, 512):
        try:
            shapes = _child_shapes(layers, in_channels, size)
        except (RuntimeError, ValueError) as exc:
            error = exc
            continue
        indices = [
            i
            for i in range(len(shapes))
            if i == len(shapes) - 1 or shapes[i][-2:] != shapes[i + 1][-2:]
        ]
        channels = [shapes[i][1] for i in indices]
        # Powers of two: unpadded or ceil-mode layers make sizes like 111 or 13 from 224.
        reductions = [2 ** max(0, round(math.log2(size / shapes[i][-2]))) for i in indices]
        return indices, channels, reductions
    raise ValueError(f"the body does not accept images of {in_channels} channels: {error}")


@torch.no_grad()
def _child_shapes(layers: nn.Sequential, in_channels: int, size: int) -> list[torch.Size]:
    was_training = layers.training
    layers.eval()
    try:
        x = torch.zeros(1, in_channels, size, size)
        shapes = []
        for layer in layers:
            x = layer(x)
            if x.ndim != 4:
                raise ValueError(
                    f"layer {type(layer).__name__} returns a {x.ndim}-d tensor, not a feature map"
                )
            shapes.append(x.shape)
        return shapes
    finally:
        layers.train(was_training)
