"""Reading image and mask files into uint8 tensors, whatever their mode.

Every image becomes a `uint8` tensor `(C, H, W)` with `C = in_channels`, after its EXIF orientation
has been applied (a phone photo taken sideways comes out the way it was shown on the phone). The
conversion from the file's mode is fixed and documented here:

| file mode | in_channels=1 | in_channels=3 | in_channels=4 |
| --- | --- | --- | --- |
| `L` (gray), `1` (bilevel) | as is | gray repeated in R, G, B | gray in R, G, B, alpha 255 |
| `I;16`, `I` (16-bit gray) | value / 257, rounded | then as `L` | then as `L` |
| `F` (32-bit float) | clipped to 0..255 | then as `L` | then as `L` |
| `RGB`, `CMYK`, `YCbCr`, ... | luminance (ITU-R 601) | RGB (via PIL) | RGB, alpha 255 |
| `RGBA`, `LA`, `P` + transparency | over white, then as above | over white | RGBA kept |
| `P` (palette) | looked up in the palette, then as above | | |

Only 1, 3 or 4 channels can be read from image files. Masks are read without any conversion of
values: a single-channel file (`L`, `P` palette indices, `I;16`) gives its stored values as class
indices; an RGB mask whose three channels are equal is read as its first channel.
"""

from __future__ import annotations

import io
import struct
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from torso.errors import TorsoError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
SUPPORTED_CHANNELS = (1, 3, 4)
_ORIENTATION = 0x0112  # the EXIF tag
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}  # orientations that turn the image by 90 degrees

#: What PIL raises for a file it cannot decode (`UnidentifiedImageError` is an `OSError`). Only
#: these mean "bad file": a MemoryError or a bug (AttributeError, ...) is not the file's fault
#: and propagates.
DECODE_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    struct.error,
    Image.DecompressionBombError,
)


class ImageReadError(TorsoError):
    """An image (or mask) file that cannot be read: `path`, and `reason` in the user's words."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"'{path}': {reason}")


class DecodedImage(NamedTuple):
    """A decoded file: the `image` (EXIF orientation applied), the file's `mode` and its `size`
    (width, height) at full resolution as displayed (after the EXIF orientation)."""

    image: Image.Image
    mode: str
    size: tuple[int, int]


def is_image_file(path: Path) -> bool:
    """True when the file's extension is one torso reads as an image."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


def failure_reason(error: Exception) -> str:
    """A short reason for a file PIL could not read, in the user's words."""
    text = str(error)
    if isinstance(error, UnidentifiedImageError):
        return "not a readable image (unknown or corrupt format)"
    if isinstance(error, Image.DecompressionBombError):
        return f"image too large to decode safely ({text})"
    if "truncated" in text.lower() or isinstance(error, EOFError):
        return "truncated image (the file ends early)"
    return f"corrupt image ({text or type(error).__name__})"


def decode_image(
    path: Path, draft_size: tuple[int, int] | None = None, data: bytes | None = None
) -> DecodedImage:
    """Open and fully decode `path` (or `data`, its bytes, when the caller has read them).

    The one decoding that training, prediction and `torso check` share: a fresh `Image.open`,
    an optional JPEG draft, `load()` of every pixel, then the EXIF orientation. `draft_size`
    lets JPEG decoding scale down by 1/2, 1/4 or 1/8 while keeping both sides at least that
    large (a big speed-up for photos much larger than the training size). Raises
    `ImageReadError` (a `TorsoError`) naming the file when it cannot be decoded.
    """
    path = Path(path)
    try:
        empty = not data if data is not None else path.stat().st_size == 0
        if empty:
            raise ImageReadError(path, "empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL warns about odd EXIF/palette details it handles
            image = Image.open(io.BytesIO(data) if data is not None else path)
            mode, (width, height) = image.mode, image.size
            if draft_size is not None and image.format == "JPEG":
                image.draft(None, draft_size)
            image.load()
            swapped = image.getexif().get(_ORIENTATION) in _SWAPPING_ORIENTATIONS
            image = ImageOps.exif_transpose(image)
    except FileNotFoundError as error:
        raise ImageReadError(path, "file not found") from error
    except DECODE_ERRORS as error:
        raise ImageReadError(path, failure_reason(error)) from error
    return DecodedImage(image, mode, (height, width) if swapped else (width, height))


def read_pil(path: Path, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """The decoded image of `decode_image(path, draft_size)`, EXIF orientation applied."""
    return decode_image(path, draft_size).image


def _to_eight_bit_gray(image: Image.Image) -> Image.Image:
    array = np.asarray(image)
    if image.mode == "F":
        array = np.clip(array, 0, 255)
    else:  # 16-bit (or 32-bit integer) gray: map the 16-bit range onto 0..255
        array = np.clip(array.astype(np.float64), 0, 65535) / 257.0
    return Image.fromarray(np.rint(array).astype(np.uint8), mode="L")


def _without_alpha(image: Image.Image) -> Image.Image:
    """Composite a transparent image over white (what an image viewer shows)."""
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def convert_mode(image: Image.Image, in_channels: int) -> Image.Image:
    """Convert a PIL image to `L` (1 channel), `RGB` (3) or `RGBA` (4) as the table above says."""
    if in_channels not in SUPPORTED_CHANNELS:
        raise TorsoError(
            f"in_channels={in_channels}: image files can be read with 1, 3 or 4 channels only"
        )
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        image = _to_eight_bit_gray(image)
    if image.mode == "P":
        has_alpha = "transparency" in image.info or image.palette.mode == "RGBA"
        image = image.convert("RGBA" if has_alpha else "RGB")
    if image.mode == "1":
        image = image.convert("L")
    if in_channels == 4:
        return image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = _without_alpha(image)
    if in_channels == 1:
        return image.convert("L")
    return image.convert("RGB")


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """An `L`/`RGB`/`RGBA` PIL image as a uint8 tensor `(C, H, W)`."""
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.transpose(2, 0, 1).copy())  # owned, writable, contiguous


def read_image(
    path: Path, in_channels: int = 3, draft_size: tuple[int, int] | None = None
) -> torch.Tensor:
    """Read one image file as uint8 `(in_channels, H, W)`; `TorsoError` names a bad file."""
    path = Path(path)
    return image_to_tensor(converted(read_pil(path, draft_size), in_channels, path))


def converted(image: Image.Image, in_channels: int, path: Path) -> Image.Image:
    """`convert_mode(image, in_channels)`; `ImageReadError` names `path` if PIL cannot convert."""
    try:
        return convert_mode(image, in_channels)
    except TorsoError:
        raise
    except (OSError, ValueError) as error:
        raise ImageReadError(path, f"cannot convert mode {image.mode} ({error})") from error


def mask_to_array(image: Image.Image, path: Path) -> np.ndarray:
    """The class indices stored in a mask image, as an integer array `(H, W)`."""
    if image.mode in ("L", "P", "I;16", "I;16B", "I;16L", "I", "1"):
        return np.asarray(image).astype(np.int64)
    if image.mode in ("RGB", "RGBA", "LA"):
        array = np.asarray(image)
        channels = array[..., :3] if image.mode != "LA" else array[..., :1]
        if (channels == channels[..., :1]).all():
            return channels[..., 0].astype(np.int64)
        raise TorsoError(
            f"mask '{path}' is a colour image; save masks as single-channel images whose pixel "
            "values are class indices (0, 1, 2, ...)"
        )
    raise TorsoError(f"mask '{path}' has mode {image.mode}; expected a single-channel image")


def read_mask(path: Path) -> torch.Tensor:
    """Read a mask file as int64 `(H, W)` class indices; `TorsoError` names a bad file."""
    path = Path(path)
    image = read_pil(path)
    return torch.from_numpy(mask_to_array(image, path))
