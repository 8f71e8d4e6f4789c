"""Datasets: labelled items to (uint8 image, target) samples, and same/different image pairs.

A sample's augmentation is a function of (seed, epoch, index) only, so the batches of an epoch do
not depend on the worker count or on what ran before (resuming gives the same batches).
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from torso.data.cache import PresizeCache
from torso.data.decode import read_image, read_mask
from torso.data.layout import Targets
from torso.data.sources import Item
from torso.data.transforms import (
    Augmentation,
    augment,
    resize_square,
    resize_square_boxes,
    sample_generator,
)
from torso.errors import TorsoError


class ImageDataset(Dataset):
    """Items of one split as `(image uint8 (C, size, size), target)` samples.

    `targets` (a `torso.data.layout.Targets`) encodes each item's target: e.g. int64 `()` class
    indices, float32 `(num_classes,)` of 0/1, float32 `(T,)` numbers; when `targets.masks`,
    each item's mask file is read and transformed with its image, int64 `(size, size)`.
    With `augmentation` (training), images are presized to `presize` and randomly augmented to
    `size`; without it they get only the deterministic resize. `epoch` is set by the loader
    before each epoch.
    """

    def __init__(
        self,
        items: list[Item],
        targets: Targets,
        size: int,
        in_channels: int = 3,
        resize: str = "squish",
        augmentation: Augmentation | None = None,
        presize: int | None = None,
        seed: int = 0,
        num_classes: int = 0,
        ignore_index: int = 255,
        cache: PresizeCache | None = None,
    ) -> None:
        self.items = list(items)
        self.targets = targets
        self.size = size
        self.in_channels = in_channels
        self.resize = resize
        self.augmentation = augmentation
        self.base_size = presize if augmentation is not None and presize else size
        self.seed = seed
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.cache = cache
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.items)

    def base(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Image `(C, B, B)` and mask `(1, B, B)` (or boxes) of item `index` at the base
        (presize) size."""
        item = self.items[index]
        side = self.base_size
        if self.cache is not None:
            cached = self.cache.get(index)
            if cached is not None and self.targets.boxes:
                # The cache keeps the image's original size, not the boxes: move them again.
                boxes = self.targets.geometry(item.target, *self.cache.original_size(index))
                return cached[0], resize_square_boxes(boxes, side, self.resize)
            if cached is not None:
                return cached
        # Reduced-scale JPEG decoding only for augmented training without masks: it changes
        # pixels slightly (validation and prediction must match exactly) and the image size
        # (a mask must match its image).
        draft = self.augmentation is not None and not (self.targets.masks or self.targets.boxes)
        image = read_image(item.path, self.in_channels, draft_size=(side, side) if draft else None)
        mask = None
        if self.targets.masks:
            values = read_mask(item.target)
            if values.shape != image.shape[-2:]:
                raise TorsoError(
                    f"mask '{item.target}' is {values.shape[1]}x{values.shape[0]} but its image "
                    f"'{item.path.name}' is {image.shape[2]}x{image.shape[1]}"
                )
            mask = values.clamp(0, 255).to(torch.uint8)[None]
        elif self.targets.boxes:  # BoundingBoxes: every transform below moves them too
            mask = self.targets.geometry(item.target, *image.shape[-2:])
        original = tuple(image.shape[-2:])
        image, mask = resize_square(image, side, self.resize, mask, self.ignore_index)
        if self.cache is not None:
            if self.targets.boxes:
                self.cache.put(index, image, size=original)
            else:
                self.cache.put(index, image, mask)
        return image, mask

    def image(self, index: int, epoch: int, stream: int = 0) -> tuple[torch.Tensor, object]:
        """The (augmented) image `(C, size, size)` uint8 and mask of item `index` in `epoch`."""
        image, mask = self.base(index)
        if self.augmentation is not None:
            generator = sample_generator(self.seed, epoch, index, stream)
            image, mask = augment(
                image, self.size, self.augmentation, generator, mask, self.ignore_index
            )
        return image, mask

    def target(self, index: int, mask: torch.Tensor | None) -> torch.Tensor:
        """The target tensor of item `index` (`mask`: its mask, already transformed)."""
        return self.targets.encode(self.items[index].target, mask, self.num_classes)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.image(index, self.epoch)
        return image, self.target(index, mask)


class PairDataset(Dataset):
    """Same/different pairs for Siamese models, drawn from an `ImageDataset` of class indices.

    Sample `index` pairs item `index` with another item: of the same class when
    `(index + epoch)` is even, of another class when odd, so every epoch is balanced (to within
    one pair) and each item is in a "same" pair every other epoch. The partner is drawn from a
    generator seeded by (seed, epoch, index). Target int64: 1 same, 0 different.
    """

    def __init__(self, images: ImageDataset, fixed_epoch: int | None = None) -> None:
        self.images = images
        self.fixed_epoch = fixed_epoch
        labels = [int(item.target) for item in images.items]
        self.labels = labels
        self.by_class: dict[int, list[int]] = {}
        for index, label in enumerate(labels):
            self.by_class.setdefault(label, []).append(index)
        if len(images) and len(self.by_class) < 2:
            raise TorsoError("pairs need images of at least two classes")
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.images)

    def partner(self, index: int, epoch: int) -> tuple[int, int]:
        """The partner item of sample `index` in `epoch` and the target (1 same, 0 different)."""
        generator = sample_generator(self.images.seed, epoch, index, stream=2)
        label = self.labels[index]
        same_class = [i for i in self.by_class[label] if i != index]
        want_same = (index + epoch) % 2 == 0 and bool(same_class)
        if want_same:
            return same_class[int(generator.integers(len(same_class)))], 1
        other_classes = sorted(c for c in self.by_class if c != label)
        chosen = other_classes[int(generator.integers(len(other_classes)))]
        members = self.by_class[chosen]
        return members[int(generator.integers(len(members)))], 0

    def __getitem__(self, index: int) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        epoch = self.fixed_epoch if self.fixed_epoch is not None else self.epoch
        other, same = self.partner(index, epoch)
        image_a, _ = self.images.image(index, epoch, stream=0)
        image_b, _ = self.images.image(other, epoch, stream=1)
        return (image_a, image_b), torch.tensor(same, dtype=torch.int64)
