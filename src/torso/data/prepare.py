"""`prepare_images(config, images)`: any image a user holds, as the model's validation input.

Prediction, export checks, embeddings and the report all prepare images here, so they see the
pixels validation saw: files are decoded by `torso.data.decode.read_image` (EXIF orientation,
mode conversion to the run's channels, no JPEG draft scaling) and resized by
`torso.data.transforms.resize_square` with the run's size and resize mode.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from torso.data.decode import convert_mode, image_to_tensor, read_image
from torso.data.transforms import resize_square
from torso.errors import TorsoError

if TYPE_CHECKING:  # pragma: no cover
    from torso.config import RunConfig

ImageInput = str | os.PathLike | Image.Image | np.ndarray | torch.Tensor


def prepare_images(config: RunConfig, images: ImageInput | Sequence[ImageInput]) -> torch.Tensor:
    """Images → float32 `(N, C, H, W)` in [0, 1] at `config.size`, as validation prepares them.

    images: a path, a PIL image, a numpy array (`(H, W)` or `(H, W, C)` uint8), a tensor
    (`(C, H, W)` or `(N, C, H, W)`; uint8 in 0..255 or float in [0, 1]), or a list of these.
    Each image is brought to `config.in_channels` channels and resized with `config.resize`.
    A file that cannot be read, or an array of the wrong shape, is a `TorsoError` naming it.
    """
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        items: list[Any] = list(images)
    elif _is_one_image(images):
        items = [images]
    else:
        items = list(images)
    if not items:
        raise TorsoError("no images to prepare")
    prepared = [_prepare_one(config, item) for item in items]
    return torch.stack(prepared)


def _is_one_image(images: Any) -> bool:
    return isinstance(images, str | os.PathLike | Image.Image | np.ndarray | torch.Tensor)


def _prepare_one(config: RunConfig, image: Any) -> torch.Tensor:
    """One image → float32 `(C, H, W)` in [0, 1], resized as validation resizes."""
    height, width = config.size
    if height != width:
        raise TorsoError(f"image size {height}x{width}: torso prepares square images only")
    resized = prepare_image(image, height, config.in_channels, config.resize)
    if resized.dtype == torch.uint8:
        return resized.to(torch.float32).div_(255.0)
    return resized.to(torch.float32)


def prepare_image(image: Any, size: int, in_channels: int, resize: str) -> torch.Tensor:
    """One image (see `prepare_images`) → `(in_channels, size, size)`, decoded and resized as
    validation does: uint8 for files, PIL images and arrays (and uint8 tensors), float32 in
    [0, 1] for float tensors. For code that keeps images as uint8 until the batch is made."""
    if isinstance(image, str | os.PathLike):
        pixels = read_image(Path(image), in_channels)
    elif isinstance(image, Image.Image):
        pixels = image_to_tensor(convert_mode(image, in_channels))
    elif isinstance(image, np.ndarray):
        pixels = _from_array(image, in_channels)
    elif isinstance(image, torch.Tensor):
        pixels = _from_tensor(image, in_channels)
    else:
        raise TorsoError(
            f"cannot prepare a {type(image).__name__} as an image: give a path, a PIL image, "
            "a numpy array or a tensor"
        )
    return resize_square(pixels, size, resize)[0]


def _from_array(array: np.ndarray, channels: int) -> torch.Tensor:
    """A numpy image `(H, W)` or `(H, W, C)` → uint8 `(channels, H, W)` through PIL's modes."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise TorsoError(
            f"a numpy image must be (H, W) or (H, W, 3 or 4), got {tuple(array.shape)}"
        )
    if array.dtype != np.uint8:
        raise TorsoError(f"a numpy image must be uint8 (0..255), got {array.dtype}")
    return image_to_tensor(convert_mode(Image.fromarray(np.ascontiguousarray(array)), channels))


def _from_tensor(tensor: torch.Tensor, channels: int) -> torch.Tensor:
    """A tensor `(C, H, W)` (uint8, or float in [0, 1]) with the run's channels, kept as is."""
    if tensor.ndim != 3:
        raise TorsoError(
            f"a tensor image must be (C, H, W) or a batch (N, C, H, W), got {tuple(tensor.shape)}"
        )
    if tensor.shape[0] != channels:
        raise TorsoError(
            f"a tensor image has {tensor.shape[0]} channels; this model reads {channels}"
        )
    tensor = tensor.detach().cpu()
    if tensor.dtype != torch.uint8:
        tensor = tensor.to(torch.float32)
    return tensor
