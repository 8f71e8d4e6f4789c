"""The presize cache: each image decoded and resized once, kept as uint8, shared by the workers.

The first epoch decodes every file and writes the presized uint8 image (and mask) into one flat
buffer; later epochs read from it and only run the random augmentations. Boxes are not stored:
the cache keeps each image's original size, and the boxes are moved from the original image's
pixels to the presized image again on every read (`resize_square_boxes`), the same steps as
the image's, so they are the same numbers as without the cache. The buffer lives in
shared memory when it fits comfortably (half the available memory and most of `/dev/shm`), else
in a memory-mapped file in `directory` (the run folder) or the temporary folder, removed when the
cache is garbage-collected or the process exits. Loader workers write into the same buffer, so
what one worker decodes in epoch 1 every process reads in epoch 2.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from pathlib import Path

import torch

_MEMORY_SHARE = 0.5  # at most this share of the available memory goes to an in-memory cache


def available_memory() -> int:
    """Bytes of memory the system can still give without swapping (MemAvailable on Linux)."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def _shared_memory_free() -> int:
    try:
        return shutil.disk_usage("/dev/shm").free
    except OSError:
        return 0


def _remove(path: str, owner: int) -> None:
    if os.getpid() == owner:
        try:
            os.remove(path)
        except OSError:
            pass


class PresizeCache:
    """`count` uint8 images `(C, S, S)`, and masks `(S, S)` when `masks`, filled on first use;
    with `sizes`, also each image's original `(height, width)` (for its boxes).

    `nbytes` is the buffer size; `location` is "memory" or the file's path.
    """

    def __init__(
        self,
        count: int,
        image_shape: tuple[int, int, int],
        masks: bool = False,
        directory: str | Path | None = None,
        *,
        sizes: bool = False,
    ) -> None:
        self.count = count
        self.image_shape = tuple(image_shape)
        self.masks = masks
        self.sizes = sizes
        channels, height, width = self.image_shape
        self._image_bytes = channels * height * width
        self._mask_bytes = height * width if masks else 0
        self._size_bytes = 8 if sizes else 0  # two int32
        self._item_bytes = self._image_bytes + self._mask_bytes + self._size_bytes
        self.nbytes = count * (1 + self._item_bytes)
        self._path: str | None = None
        fits_memory = self.nbytes <= _MEMORY_SHARE * available_memory()
        if fits_memory and self.nbytes <= 0.8 * _shared_memory_free():
            self.location = "memory"
            self._buffer = torch.zeros(self.nbytes, dtype=torch.uint8).share_memory_()
        else:
            folder = Path(directory) if directory is not None else Path(tempfile.gettempdir())
            folder.mkdir(parents=True, exist_ok=True)
            if shutil.disk_usage(folder).free < 1.1 * self.nbytes:
                raise MemoryError(
                    f"presize cache of {self.nbytes / 2**20:.0f} MiB fits neither in memory nor "
                    f"on the disk of '{folder}'"
                )
            handle, path = tempfile.mkstemp(prefix="torso-presize-", suffix=".u8", dir=folder)
            with os.fdopen(handle, "wb") as file:
                file.truncate(self.nbytes)
            self._path = path
            self.location = path
            weakref.finalize(self, _remove, path, os.getpid())
            self._buffer = self._open_file()

    def _open_file(self) -> torch.Tensor:
        return torch.from_file(self._path, shared=True, size=self.nbytes, dtype=torch.uint8)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        if self._path is not None:  # a worker started by spawn maps the same file again
            state["_buffer"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self._buffer is None:
            self._buffer = self._open_file()

    def _views(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        start = self.count + index * self._item_bytes
        image = self._buffer[start : start + self._image_bytes].view(self.image_shape)
        begin = start + self._image_bytes
        mask = None
        if self.masks:
            mask = self._buffer[begin : begin + self._mask_bytes].view(1, *self.image_shape[1:])
        begin += self._mask_bytes
        return image, mask, self._buffer[begin : begin + self._size_bytes]

    def get(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """The cached image `(C, S, S)` and mask `(1, S, S)` (copies), or None if not filled yet."""
        if not self._buffer[index]:
            return None
        image, mask, _ = self._views(index)
        return image.clone(), (mask.clone() if mask is not None else None)

    def original_size(self, index: int) -> tuple[int, int]:
        """The `(height, width)` of item `index`'s image before presizing (a cache made with
        `sizes`, the item filled)."""
        if not self.sizes:
            raise ValueError("this cache keeps no image sizes (PresizeCache(..., sizes=True))")
        height, width = self._views(index)[2].clone().view(torch.int32).tolist()
        return height, width

    def put(
        self,
        index: int,
        image: torch.Tensor,
        mask: torch.Tensor | None = None,
        size: tuple[int, int] | None = None,
    ) -> None:
        """Store the presized image (and mask, and with `sizes` the original image's `size`
        `(height, width)`) of item `index`."""
        image_view, mask_view, size_view = self._views(index)
        image_view.copy_(image)
        if mask_view is not None:
            mask_view.copy_(mask)
        if self.sizes:
            if size is None:
                raise ValueError("a cache made with sizes=True needs each image's original size")
            height, width = (int(v) for v in size)
            size_view.copy_(torch.tensor([height, width], dtype=torch.int32).view(torch.uint8))
        self._buffer[index] = 1

    @property
    def filled(self) -> int:
        """How many items are in the cache so far."""
        return int(self._buffer[: self.count].sum())

    def describe(self) -> str:
        """One line: size and where the cache lives."""
        where = "in shared memory" if self.location == "memory" else f"in '{self.location}'"
        return f"presize cache {self.nbytes / 2**20:.1f} MiB {where}"
