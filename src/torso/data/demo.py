"""The embedded demo data: real images that ship inside torso, written out as ordinary folders.

- Fashion-MNIST (MIT, Zalando SE): a class-balanced subset, 10,000 training and 1,000
  validation 28×28 grey images of 10 kinds of clothing (`assets/fashion_mnist.npz`).
- Nuclei (BSD-3, from the 2018 Data Science Bowl via stardist): one 512×512 fluorescence image
  with its nucleus mask (`assets/nuclei.npz`), cut into tiles; the bottom quarter of the image is
  held out for validation, so no validation pixel is ever seen in training. For detection, each
  tile's nuclei are the connected components of its mask, each one's bounding box a "nucleus".

The folders use the layouts `torso train` reads, so the demo runs the same code a user's data
does: `train/<class>/*.png` + `valid/<class>/*.png`, `images/` + `masks/` + `codes.txt`, and
COCO's `annotations/{train,valid}.json` + `images/{train,valid}/`.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

FASHION_CLASSES = [
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
]
NUCLEI_CODES = ["background", "nucleus"]
TILE = 128
TRAIN_STRIDE = 32
HELD_OUT_ROWS = 128  # the bottom rows of the nuclei image: validation only
#: A connected piece of nucleus mask smaller than this (pixels inside the tile) is no box: a
#: sliver of a nucleus cut by the tile's edge, or noise.
MIN_NUCLEUS_PIXELS = 10


def _asset(name: str) -> np.lib.npyio.NpzFile:
    with resources.as_file(resources.files("torso") / "assets" / name) as path:
        return np.load(path, allow_pickle=False)


def _done(folder: Path, expected: int) -> bool:
    marker = folder / ".complete"
    return marker.exists() and marker.read_text().strip() == str(expected)


def write_fashion_mnist(folder: str | Path) -> Path:
    """Write the Fashion-MNIST subset as PNGs under `folder` (train/ and valid/ class folders).

    Reuses the folder when a previous call completed it. Returns `folder`.
    """
    folder = Path(folder)
    data = _asset("fashion_mnist.npz")
    total = len(data["train_labels"]) + len(data["valid_labels"])
    if _done(folder, total):
        return folder
    for split in ("train", "valid"):
        images, labels = data[f"{split}_images"], data[f"{split}_labels"]
        for name in FASHION_CLASSES:
            (folder / split / name).mkdir(parents=True, exist_ok=True)
        for index, (image, label) in enumerate(zip(images, labels, strict=True)):
            path = folder / split / FASHION_CLASSES[int(label)] / f"{split}-{index:05d}.png"
            Image.fromarray(image, mode="L").save(path)
    (folder / ".complete").write_text(str(total))
    return folder


def tile_origins(height: int, width: int) -> dict[str, list[tuple[int, int]]]:
    """Top-left corners of the tiles: overlapping ones (stride 32) above the held-out band for
    training, non-overlapping ones inside it for validation."""
    top = height - HELD_OUT_ROWS
    return {
        "train": [
            (y, x)
            for y in range(0, top - TILE + 1, TRAIN_STRIDE)
            for x in range(0, width - TILE + 1, TRAIN_STRIDE)
        ],
        "valid": [
            (y, x) for y in range(top, height - TILE + 1, TILE) for x in range(0, width, TILE)
        ],
    }


def nuclei_tiles() -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """(image, mask) tiles of the nuclei image for "train" and "valid" (see `tile_origins`)."""
    data = _asset("nuclei.npz")
    image, mask = data["image"], data["mask"]
    return {
        split: [
            (image[y : y + TILE, x : x + TILE], mask[y : y + TILE, x : x + TILE])
            for y, x in origins
        ]
        for split, origins in tile_origins(*image.shape).items()
    }


def write_nuclei(folder: str | Path) -> Path:
    """Write nuclei tiles as `train/` and `valid/` folders of `images/` + `masks/` + `codes.txt`.

    Mask pixels are 0 (background) or 1 (nucleus). Returns `folder`.
    """
    folder = Path(folder)
    tiles = nuclei_tiles()
    total = sum(len(v) for v in tiles.values())
    if _done(folder, total):
        return folder
    for split, pairs in tiles.items():
        (folder / split / "images").mkdir(parents=True, exist_ok=True)
        (folder / split / "masks").mkdir(parents=True, exist_ok=True)
        for index, (image, mask) in enumerate(pairs):
            Image.fromarray(image, mode="L").save(folder / split / "images" / f"{index:04d}.png")
            Image.fromarray(mask, mode="L").save(folder / split / "masks" / f"{index:04d}.png")
    (folder / "codes.txt").write_text("\n".join(NUCLEI_CODES) + "\n")
    (folder / ".complete").write_text(str(total))
    return folder


def connected_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Label the 4-connected regions of the non-zero pixels of a 2-D `mask`: an int32 array of
    the same shape (0 background, regions 1 … count) and the count. (Nuclei that touch
    side by side become one region: the mask holds no boundary between them.)"""
    labels = np.zeros(mask.shape, dtype=np.int32)
    height, width = mask.shape
    count = 0
    for start_y, start_x in zip(*np.nonzero(mask), strict=True):
        if labels[start_y, start_x]:
            continue
        count += 1
        labels[start_y, start_x] = count
        stack = [(int(start_y), int(start_x))]
        while stack:
            y, x = stack.pop()
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = count
                    stack.append((ny, nx))
    return labels, count


def nucleus_boxes(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """The bounding boxes `(x0, y0, x1, y1)` (pixel edges, x1 and y1 exclusive) of the
    connected components of `mask` with at least `MIN_NUCLEUS_PIXELS` pixels, top to bottom."""
    labels, count = connected_components(mask)
    boxes = []
    for region in range(1, count + 1):
        ys, xs = np.nonzero(labels == region)
        if len(ys) >= MIN_NUCLEUS_PIXELS:
            boxes.append((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))
    return boxes


def write_nuclei_boxes(folder: str | Path) -> Path:
    """Write the nuclei tiles for detection in COCO's layout: `annotations/train.json` and
    `annotations/valid.json` (one category, "nucleus"; a box per connected component of each
    tile's mask, see `nucleus_boxes`) with the tiles in `images/train/` and `images/valid/`.
    Returns `folder`."""
    import json

    folder = Path(folder)
    tiles = nuclei_tiles()
    total = sum(len(v) for v in tiles.values())
    if _done(folder, total):
        return folder
    (folder / "annotations").mkdir(parents=True, exist_ok=True)
    for split, pairs in tiles.items():
        (folder / "images" / split).mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for index, (image, mask) in enumerate(pairs):
            name = f"{index:04d}.png"
            Image.fromarray(image, mode="L").save(folder / "images" / split / name)
            image_id = index + 1
            images.append({"id": image_id, "file_name": name, "width": TILE, "height": TILE})
            for x0, y0, x1, y1 in nucleus_boxes(mask):
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": 1,
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "area": (x1 - x0) * (y1 - y0),
                        "iscrowd": 0,
                    }
                )
        document = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": 1, "name": "nucleus"}],
        }
        (folder / "annotations" / f"{split}.json").write_text(json.dumps(document) + "\n")
    (folder / ".complete").write_text(str(total))
    return folder
