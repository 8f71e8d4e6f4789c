"""Small generated data sets for the data tests: builders imported by the test modules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def noise_image(seed: int, width: int = 40, height: int = 32, mode: str = "RGB") -> Image.Image:
    """A random-noise image; different seeds give different bytes."""
    generator = np.random.default_rng(seed)
    channels = {"RGB": 3, "L": 1}[mode]
    pixels = (generator.random((height, width, channels)) * 255).astype(np.uint8)
    return Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels, mode=mode)


def make_class_folders(
    root: Path, classes: dict[str, int], size: tuple[int, int] = (40, 32), start_seed: int = 0
) -> Path:
    """`root/<class>/<i>.png` with `classes[name]` noise images per class."""
    seed = start_seed
    for name, count in classes.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            noise_image(seed, *size).save(folder / f"{i}.png")
            seed += 1
    return root


def make_segmentation(
    root: Path, count: int = 6, size: tuple[int, int] = (48, 40), codes: int | None = 3
) -> Path:
    """`root/images/<i>.jpg` (noise with a bright rectangle) and `root/masks/<i>.png` (1 there)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    width, height = size
    for i in range(count):
        image = np.array(noise_image(i, width, height)) // 4
        mask = np.zeros((height, width), np.uint8)
        top, left = 5 + i % 5, 6 + i % 7
        box_height, box_width = round(height * 0.3), width // 3
        image[top : top + box_height, left : left + box_width] = 250
        mask[top : top + box_height, left : left + box_width] = 1
        mask[-4:, -4:] = 2
        Image.fromarray(image).save(root / "images" / f"{i}.jpg", quality=95)
        Image.fromarray(mask).save(root / "masks" / f"{i}.png")
    if codes is not None:
        (root / "codes.txt").write_text("\n".join(["background", "box", "corner", "x"][:codes]))
    return root


def write_csv(path: Path, rows: list[list[object]]) -> Path:
    """A CSV file from rows of cells (the first row is the header)."""
    path.write_text("\n".join(",".join(str(cell) for cell in row) for row in rows) + "\n")
    return path
