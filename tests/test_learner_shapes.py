"""Generated, learnable image data for the Learner's tests (and a check that it is what it says).

* `shapes`: a circle, a square or a triangle in a random colour, size and place on a dark noisy
  background; the label is the shape.
* `colour_blobs`: up to three blobs, red, green and blue, each present with probability 1/2; the
  labels are the colours present (multi-label).
* `squares`: one grey square whose side is the regression target (as a fraction of the image).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

SHAPES = ["circle", "square", "triangle"]


def _grid(size: int):
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    return yy, xx


def shape_mask(kind: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A boolean (size, size) mask of shape `kind` (0 circle, 1 square, 2 triangle)."""
    yy, xx = _grid(size)
    radius = rng.uniform(0.22, 0.32) * size
    cx, cy = rng.uniform(radius, size - radius, 2)
    if kind == 0:
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2
    if kind == 1:
        return (abs(xx - cx) <= radius * 0.85) & (abs(yy - cy) <= radius * 0.85)
    top = cy - radius
    return (yy >= top) & (yy <= cy + radius * 0.7) & (abs(xx - cx) <= (yy - top) * 0.6)


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    image = np.ones((3, size, size), np.float32) * rng.uniform(0.0, 0.3, 3)[:, None, None]
    return image + rng.normal(0, 0.03, image.shape).astype(np.float32)


def shapes(count: int, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images float32 (count, 3, size, size) in [0, 1] and shape labels int64 (count,)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, count)
    images = np.empty((count, 3, size, size), np.float32)
    for index, kind in enumerate(labels):
        image = _background(size, rng)
        image[:, shape_mask(int(kind), size, rng)] = rng.uniform(0.5, 1.0, 3)[:, None]
        images[index] = image.clip(0, 1)
    return torch.from_numpy(images), torch.from_numpy(labels)


def colour_blobs(count: int, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images with red/green/blue blobs and 0/1 targets float32 (count, 3): which are present."""
    rng = np.random.default_rng(seed)
    targets = (rng.random((count, 3)) < 0.5).astype(np.float32)
    images = np.empty((count, 3, size, size), np.float32)
    yy, xx = _grid(size)
    for index in range(count):
        image = _background(size, rng) * 0.5
        for channel in np.flatnonzero(targets[index]):
            radius = rng.uniform(0.12, 0.2) * size
            cx, cy = rng.uniform(radius, size - radius, 2)
            blob = (xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2
            image[channel, blob] = rng.uniform(0.7, 1.0)
        images[index] = image.clip(0, 1)
    return torch.from_numpy(images), torch.from_numpy(targets)


def squares(count: int, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of one light grey square and targets float32 (count, 1): its side / image size."""
    rng = np.random.default_rng(seed)
    sides = rng.uniform(0.2, 0.8, count)
    images = np.empty((count, 3, size, size), np.float32)
    for index, side in enumerate(sides):
        image = _background(size, rng)
        width = max(1, int(round(side * size)))
        x, y = rng.integers(0, size - width + 1, 2)
        image[:, y : y + width, x : x + width] = 0.9
        images[index] = image.clip(0, 1)
        sides[index] = width / size
    return torch.from_numpy(images), torch.from_numpy(sides.astype(np.float32)[:, None])


def loaders(make, train: int, valid: int, batch_size: int = 32, size: int = 32):
    """Shuffled training and ordered validation DataLoaders over `make(count, size, seed)`."""
    x, y = make(train, size, seed=0)
    xv, yv = make(valid, size, seed=1)
    train_loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True)
    valid_loader = DataLoader(TensorDataset(xv, yv), batch_size=64)
    return train_loader, valid_loader


def write_shape_folder(root: Path, per_class: int, size: int = 32, seed: int = 0) -> Path:
    """`root/<shape>/<n>.png` class folders of generated shapes; returns `root`."""
    rng = np.random.default_rng(seed)
    for kind, name in enumerate(SHAPES):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for number in range(per_class):
            image = _background(size, rng)
            image[:, shape_mask(kind, size, rng)] = rng.uniform(0.5, 1.0, 3)[:, None]
            pixels = (image.clip(0, 1).transpose(1, 2, 0) * 255).round().astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{number}.png")
    return root


def test_generated_data_is_what_it_says():
    images, labels = shapes(30, seed=3)
    assert images.shape == (30, 3, 32, 32) and labels.dtype == torch.int64
    assert 0 <= images.min() and images.max() <= 1
    assert set(labels.tolist()) == {0, 1, 2}
    blobs, present = colour_blobs(20)
    # A present colour has bright pixels in its channel; an absent one does not.
    brightest = blobs.amax(dim=(2, 3))
    assert torch.equal(brightest > 0.6, present.bool())
    boxes, sides = squares(10)
    assert sides.shape == (10, 1) and (0.15 <= sides).all() and (sides <= 0.85).all()
