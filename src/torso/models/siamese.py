"""Siamese pair models (fastbook chapter 15): one body encodes both images, a head compares them.

```python
model = create_siamese_model("resnet34")          # SiameseModel(body, head)
logits = model(images_a, images_b)                # (N, 2): different, same
```

The two feature maps are concatenated on channels, so the head is `create_head(2 * C, 2)` and
sees both images at every spatial position (with concat pooling it has 4·C inputs, as in the
book). Like every torso model it has `model.body` and `model.head`, so
`torso.models.param_groups`, `freeze` and `unfreeze` work on it unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from torso.errors import TorsoError
from torso.models.bodies import Body, create_body
from torso.models.bodies.weights import Pretrained
from torso.models.heads import create_head
from torso.models.model import feature_width


class SiameseModel(nn.Module):
    """`head(cat([body(images_a), body(images_b)], dim=1))`: logits `(N, 2)`, index 1 = same.

    body: image `(N, C_in, H, W)` in [0, 1] → feature map `(N, C, h, w)`, shared by both images.
    head: feature map `(N, 2 * C, h, w)` → `(N, num_outputs)`, e.g. `create_head(2 * C, 2)`.

    Both images go through the body in one batch of `2N` when their shapes agree: one pass is
    faster than two, and in training mode BatchNorm then normalises both halves with the same
    batch statistics, which keeps the encoding of a pair symmetric. In eval mode the result is the
    same as encoding each image on its own.
    """

    def __init__(self, body: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.head = head

    def encode_pair(
        self, images_a: torch.Tensor, images_b: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The body's feature maps of both images: two `(N, C, h, w)` tensors."""
        if images_a.shape == images_b.shape:
            maps = self.body(torch.cat([images_a, images_b], dim=0))
            return maps[: len(images_a)], maps[len(images_a) :]
        return self.body(images_a), self.body(images_b)

    def forward(  # type: ignore[override]
        self, images_a: torch.Tensor, images_b: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Images `(N, C_in, H, W)` twice → logits `(N, num_outputs)`."""
        if images_b is None:
            raise TorsoError(
                "a Siamese model compares two images: give a pair (torso predict RUN --pair A B)"
            )
        if len(images_a) != len(images_b):
            raise TorsoError(
                f"a Siamese model compares images in pairs: got {len(images_a)} first images "
                f"and {len(images_b)} second images"
            )
        maps_a, maps_b = self.encode_pair(images_a, images_b)
        if maps_a.shape[-2:] != maps_b.shape[-2:]:
            raise TorsoError(
                f"the two images of a pair give feature maps of different sizes "
                f"({tuple(maps_a.shape[-2:])} and {tuple(maps_b.shape[-2:])}): "
                "resize both to the same size"
            )
        return self.head(torch.cat([maps_a, maps_b], dim=1))


def create_siamese_model(
    backbone: str | nn.Module | Body,
    *,
    pretrained: Pretrained = False,
    in_channels: int = 3,
    num_outputs: int = 2,
    **head_options,
) -> SiameseModel:
    """A `SiameseModel` with a fresh `create_head(2 * C, num_outputs, **head_options)`.

    backbone: a name or module for `torso.create_body`, or a ready Body; `C` (the body's output
    channels) is measured by a dummy forward pass. For resnet34 the model has 22,339,392
    parameters: body 21,284,672 + head 1,054,720, as in the book.
    """
    body = (
        backbone
        if isinstance(backbone, Body)
        else create_body(backbone, pretrained=pretrained, in_channels=in_channels)
    )
    head = create_head(2 * feature_width(body), num_outputs, **head_options)
    return SiameseModel(body, head)
