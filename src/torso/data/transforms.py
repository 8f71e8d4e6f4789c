"""Resizing and augmentation of an image and its mask together, with torchvision.transforms.v2.

Images are uint8 tensors `(C, H, W)`, masks uint8 tensors `(1, H, W)` of class indices. Every
geometric step is applied to both with the same parameters; masks always use nearest-neighbour
sampling and fill uncovered pixels with the ignore value, images fill them with black.

Resize modes (`resize=`), for a square output of side `size`:
- `squish`: stretch the whole image to `size x size` (aspect ratio not kept, nothing lost);
- `crop`: scale the shorter side to `size`, then cut the centre square;
- `pad`: scale the longer side to `size`, then pad the short side equally on both ends.

Validation and prediction get only that deterministic resize. Training, with augmentation on,
first makes a slightly larger square (the presize, also what the cache stores), then draws
parameters from a random generator seeded per sample and applies: a random crop of `min_scale`
to 100% of the area (by default the whole presized image) with aspect 3/4-4/3 resized to
`size`, a horizontal flip, a small rotation and zoom, a perspective warp and a
brightness/contrast change, in the spirit of fastai's `aug_transforms`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from torso.errors import TorsoError

RESIZE_MODES = ("squish", "crop", "pad")


@dataclass(frozen=True)
class Augmentation:
    """Random training augmentation settings (defaults follow fastai's `aug_transforms`).

    `min_scale` is the smallest share of the presized image's area a random crop keeps (1.0,
    fastai's own default: measured by `benchmarks/defaults.py`, 0.75 cost 2-13 points of
    accuracy on Fashion-MNIST and on digits in short fine-tuning runs);
    `max_warp` moves each corner by up to that fraction of half the side; `max_lighting` is the
    largest brightness shift (as a fraction of full scale, times 1/2) and contrast change.
    """

    flip: bool = True
    max_rotate: float = 10.0
    min_zoom: float = 1.0
    max_zoom: float = 1.1
    max_warp: float = 0.2
    max_lighting: float = 0.2
    min_scale: float = 1.0
    p_affine: float = 0.75
    p_lighting: float = 0.75


def check_resize_mode(resize: str) -> str:
    """Return `resize` if it is a known mode, else raise `TorsoError` naming the choices."""
    if resize not in RESIZE_MODES:
        raise TorsoError(f"resize='{resize}' is not one of {', '.join(RESIZE_MODES)}")
    return resize


def resize_square(
    image: torch.Tensor,
    size: int,
    resize: str = "squish",
    mask: torch.Tensor | None = None,
    ignore_index: int = 255,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Resize an image `(C, H, W)` (and its mask `(1, H, W)`, or its boxes as a
    `tv_tensors.BoundingBoxes`) to `size x size` by `resize`."""
    target = _scaled_shape(*image.shape[-2:], size, resize)
    image = _to_square(image, target, size, resize, fill=0)
    if mask is not None:
        mask = _to_square(mask, target, size, resize, fill=ignore_index, nearest=True)
    return image, mask


def resize_square_boxes(boxes: torch.Tensor, size: int, resize: str = "squish") -> torch.Tensor:
    """The boxes (a `tv_tensors.BoundingBoxes` on their image's canvas) as `resize_square`
    moves them with their image, without the image: the same steps, so the same numbers."""
    target = _scaled_shape(*boxes.canvas_size, size, resize)
    return _to_square(boxes, target, size, resize, fill=0)


def _scaled_shape(height: int, width: int, size: int, resize: str) -> list[int]:
    """The `[height, width]` an image is scaled to before it is cropped or padded to `size`."""
    if resize == "squish":
        return [size, size]
    if resize == "crop":
        scale = size / min(height, width)
        return [max(size, round(height * scale)), max(size, round(width * scale))]
    scale = size / max(height, width)
    return [max(1, min(size, round(height * scale))), max(1, min(size, round(width * scale)))]


def _to_square(
    value: torch.Tensor,
    target: list[int],
    size: int,
    resize: str,
    fill: int,
    nearest: bool = False,
) -> torch.Tensor:
    """An image, a mask (`nearest`) or boxes scaled to `target`, then cut (crop) or padded with
    `fill` (pad) to `size x size`."""
    shape = list(value.canvas_size) if hasattr(value, "canvas_size") else list(value.shape[-2:])
    if shape != target:
        if nearest:
            value = F.resize(value, target, interpolation=InterpolationMode.NEAREST_EXACT)
        else:
            value = F.resize(value, target, antialias=True)
    if resize == "crop":
        value = F.center_crop(value, [size, size])
    elif resize == "pad":
        pad_h, pad_w = size - target[0], size - target[1]
        padding = [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2]
        if any(padding):
            value = F.pad(value, padding, fill=fill)
    return value


def undo_resize_square(
    values: torch.Tensor, height: int, width: int, resize: str, *, fill: float, mode: str
) -> torch.Tensor:
    """A map `(S, S)` over a `resize_square` output, brought back over the original
    `height`×`width` image (float32): the inverse of the resize, by `mode` ("bilinear" for a
    heat map, "nearest-exact" for class ids). Parts of the image the model did not see (cut
    off by `resize="crop"`) get `fill`; the pad of `resize="pad"` is cut off."""
    size = values.shape[-1]
    values = values.float()
    if resize == "crop":
        # The image was scaled so its short side is `size`, then its centre cut out (torchvision
        # rounds the offsets): put the map back in the middle, `fill` around it.
        scale = size / min(height, width)
        scaled = (max(size, round(height * scale)), max(size, round(width * scale)))
        top, left = round((scaled[0] - size) / 2), round((scaled[1] - size) / 2)
        region = torch.full(scaled, float(fill))
        region[top : top + size, left : left + size] = values
    elif resize == "pad":
        # The image was scaled so its long side is `size`, then padded around: cut the pad off.
        scale = size / max(height, width)
        scaled = (
            max(1, min(size, round(height * scale))),
            max(1, min(size, round(width * scale))),
        )
        top, left = (size - scaled[0]) // 2, (size - scaled[1]) // 2
        region = values[top : top + scaled[0], left : left + scaled[1]]
    else:
        region = values
    smooth = {"align_corners": False} if mode == "bilinear" else {}
    resized = torch.nn.functional.interpolate(
        region[None, None], size=(height, width), mode=mode, **smooth
    )
    return resized[0, 0]


def input_region(
    height: int, width: int, size: int, resize: str = "squish"
) -> tuple[float, float, float, float]:
    """Where the `size x size` square that `resize_square` makes of a `height x width` image
    lies over that image: `(left, top, right, bottom)` in the image's pixels. `squish` covers
    the whole image; `crop` its centre square, inside it; `pad` a square larger than the image,
    around it. A position `x` in the square is `left + x * (right - left) / size` in the image."""
    if resize == "squish":
        return 0.0, 0.0, float(width), float(height)
    if resize == "crop":
        scale = size / min(height, width)
        scaled = (max(size, round(height * scale)), max(size, round(width * scale)))
        # torchvision's center_crop: the offset rounded to the nearest pixel
        top, left = (float(int(round((side - size) / 2.0))) for side in scaled)
    elif resize == "pad":
        scale = size / max(height, width)
        scaled = (
            max(1, min(size, round(height * scale))),
            max(1, min(size, round(width * scale))),
        )
        top, left = (-float((size - side) // 2) for side in scaled)
    else:
        raise TorsoError(f"unknown resize mode {resize!r}: give squish, crop or pad")
    scale_y, scale_x = height / scaled[0], width / scaled[1]
    return (
        left * scale_x,
        top * scale_y,
        (left + size) * scale_x,
        (top + size) * scale_y,
    )


def sample_generator(seed: int, epoch: int, index: int, stream: int = 0) -> np.random.Generator:
    """The random generator of one sample: a function of (seed, epoch, index, stream) only."""
    return np.random.default_rng([int(seed), int(epoch), int(index), int(stream)])


def _rotation_zoom(angle: float, zoom: float, cx: float, cy: float) -> np.ndarray:
    """Output-to-input pixel map of a rotation by `angle` radians and a zoom about (cx, cy)."""
    cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
    return np.array(
        [[cos, -sin, cx - cos * cx + sin * cy], [sin, cos, cy - sin * cx - cos * cy], [0, 0, 1]]
    )


def _homography(sources: list, targets: list) -> np.ndarray:
    """The 3x3 map taking each of four `targets` points (output) to its `sources` point (input)."""
    rows, values = [], []
    for (xs, ys), (xt, yt) in zip(sources, targets, strict=True):
        rows.append([xt, yt, 1, 0, 0, 0, -xs * xt, -xs * yt])
        rows.append([0, 0, 0, xt, yt, 1, -ys * xt, -ys * yt])
        values.extend([xs, ys])
    solution = np.linalg.solve(np.array(rows, dtype=np.float64), np.array(values))
    return np.append(solution, 1.0).reshape(3, 3)


def augment(
    image: torch.Tensor,
    size: int,
    settings: Augmentation,
    generator: np.random.Generator,
    mask: torch.Tensor | None = None,
    ignore_index: int = 255,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Randomly crop a presized image `(C, P, P)` to `(C, size, size)` and augment it.

    The mask `(1, P, P)`, if given, gets the same geometry with nearest sampling. All random
    numbers are drawn up front in a fixed order, so a (seed, epoch, index) always gives the
    same result whatever is switched off.
    """
    u = generator.random(16)
    height, width = image.shape[-2:]
    area = height * width * (settings.min_scale + (1.0 - settings.min_scale) * u[0])
    log_ratio = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[1]
    crop_w = min(width, max(1, round(math.sqrt(area * math.exp(log_ratio)))))
    crop_h = min(height, max(1, round(math.sqrt(area / math.exp(log_ratio)))))
    top = int(u[2] * (height - crop_h + 1))
    left = int(u[3] * (width - crop_w + 1))
    image = F.resized_crop(image, top, left, crop_h, crop_w, [size, size], antialias=True)
    if mask is not None:
        mask = F.resized_crop(
            mask,
            top,
            left,
            crop_h,
            crop_w,
            [size, size],
            interpolation=InterpolationMode.NEAREST_EXACT,
        )
    if settings.flip and u[4] < 0.5:
        image = F.horizontal_flip(image)
        mask = F.horizontal_flip(mask) if mask is not None else None
    # Rotation/zoom and the perspective warp are fused into one homography, one resampling.
    matrix = np.eye(3)
    if u[5] < settings.p_affine and (settings.max_rotate or settings.max_zoom > settings.min_zoom):
        angle = math.radians(settings.max_rotate * (2 * u[6] - 1))
        zoom = settings.min_zoom + (settings.max_zoom - settings.min_zoom) * u[7]
        matrix = _rotation_zoom(angle, zoom, size / 2, size / 2)
    if u[8] < settings.p_affine and settings.max_warp > 0:
        reach = settings.max_warp * size / 2
        shifts = np.abs((2 * generator.random(8) - 1) * reach)
        corners = [(0, 0), (size, 0), (size, size), (0, size)]
        inward = [(1, 1), (-1, 1), (-1, -1), (1, -1)]
        moved = [
            (x + shifts[2 * k] * inward[k][0], y + shifts[2 * k + 1] * inward[k][1])
            for k, (x, y) in enumerate(corners)
        ]
        matrix = matrix @ _homography(moved, corners)
    if not np.allclose(matrix, np.eye(3)):
        coefficients = (matrix / matrix[2, 2]).flatten()[:8].tolist()
        # fill=None samples zeros outside, as fill=0 would, without the extra coverage pass
        image = F.perspective(
            image, None, None, InterpolationMode.BILINEAR, fill=None, coefficients=coefficients
        )
        if mask is not None:
            mask = F.perspective(
                mask,
                None,
                None,
                InterpolationMode.NEAREST,
                fill=[ignore_index],
                coefficients=coefficients,
            )
    if u[9] < settings.p_lighting and settings.max_lighting > 0:
        light = settings.max_lighting
        contrast = math.exp(math.log(1 - light) + (-2 * math.log(1 - light)) * u[10])
        brightness = 255.0 * light * (u[11] - 0.5)
        values = image.float()
        mean = values.mean()
        image = ((values - mean) * contrast + mean + brightness).clamp_(0, 255).round_()
        image = image.to(torch.uint8)
    return image, mask
