"""Class activation maps (Grad-CAM) of a body + head model.

Grad-CAM (Selvaraju et al., 2017) weighs each channel of the body's final feature map by the
spatial mean of the gradient of one class score with respect to it; the map is the ReLU of the
weighted sum of the channels, upsampled to the input size.

Written here rather than taken from the `grad-cam` package: every torso body already returns
its final feature map `(N, C, h, w)` (a vision transformer's tokens included), and every
classifier is `head(body(images))`, so the map is a dozen lines with no forward hooks, no
reshape function per architecture, no gradients accumulated on the model's parameters, and no
OpenCV dependency (which `grad-cam` pulls in for its drawing).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from torso.errors import NotExplainableError


def grad_cam(
    model: nn.Module,
    images: torch.Tensor,
    scores: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Grad-CAM maps of `images` `(N, C, H, W)` → float32 `(N, H, W)` in [0, 1].

    model: has `.body` (images → final map `(N, C, h, w)`) and `.head` (that map → outputs).
    scores: the model's outputs → the score to explain of each image `(N,)` (e.g. the logit
        of its predicted class). Each map is divided by its own maximum; a map that is zero
        everywhere (nothing in the image raises the score) stays zero.

    The body runs without gradients and the gradient is taken with respect to its output
    only, so the model's parameters get no `.grad` and their `requires_grad` is untouched.
    The model is put in eval mode (dropout off, batch norm on its running statistics).
    """
    body, head = getattr(model, "body", None), getattr(model, "head", None)
    if body is None or head is None:
        raise NotExplainableError(
            f"a {type(model).__name__} has no .body and .head: class activation maps need "
            "a torso model whose head takes the body's final feature map"
        )
    model.eval()
    with torch.no_grad():
        features = body(images)
    features = features.detach().requires_grad_(True)
    with torch.enable_grad():
        chosen = scores(head(features))
        # The samples of a batch in eval mode do not mix, so the gradient of the sum gives
        # each image the gradient of its own score.
        (gradients,) = torch.autograd.grad(chosen.sum(), features)
    weights = gradients.float().mean(dim=(2, 3), keepdim=True)
    maps = F.relu((weights * features.detach().float()).sum(dim=1, keepdim=True))
    maps = F.interpolate(maps, size=images.shape[-2:], mode="bilinear", align_corners=False)
    maps = maps[:, 0]
    peaks = maps.amax(dim=(1, 2), keepdim=True)
    return torch.where(peaks > 0, maps / peaks.clamp(min=1e-12), torch.zeros_like(maps))
