"""The embedded demo data: real images that ship inside torso, written out as ordinary folders.

- Fashion-MNIST (MIT, Zalando SE): a class-balanced subset, 10,000 training and 1,000
  validation 28×28 grey images of 10 kinds of clothing (`assets/fashion_mnist.npz`).
- Nuclei (BSD-3, from the 2018 Data Science Bowl via stardist): one 512×512 fluorescence image
  with its nucleus mask and its labelled nuclei (`assets/nuclei.npz`), cut into tiles; the bottom
  quarter of the image is held out for validation, so no validation pixel is ever seen in
  training. For detection, each labelled nucleus of a tile gives one "nucleus" box.

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
#: A nucleus with fewer pixels than this inside the tile is no box: a
#: sliver of a nucleus cut by the tile's edge, or noise.
MIN_NUCLEUS_PIXELS = 10


def _asset(name: str) -> np.lib.npyio.NpzFile:
    with resources.as_file(resources.files("torso") / "assets" / name) as path:
        return np.load(path, allow_pickle=False)


def _done(folder: Path, expected: int | str) -> bool:
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


def nuclei_tiles(layer: str = "mask") -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """(image, target) tiles of the nuclei image for "train" and "valid" (see `tile_origins`).

    layer: "mask" (0 background, 1 nucleus) or "labels" (the nucleus each pixel belongs to,
    numbered over the whole image; 0 none): the annotation the 2018 Data Science Bowl gives,
    in which nuclei that touch are still told apart."""
    data = _asset("nuclei.npz")
    image, target = data["image"], data[layer]
    return {
        split: [
            (image[y : y + TILE, x : x + TILE], target[y : y + TILE, x : x + TILE])
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


def nucleus_boxes(labels: np.ndarray) -> list[tuple[int, int, int, int]]:
    """The bounding boxes `(x0, y0, x1, y1)` (pixel edges, x1 and y1 exclusive) of the nuclei
    of a tile of instance `labels` (0 none) with at least `MIN_NUCLEUS_PIXELS` pixels in the
    tile, in the order of their numbers."""
    boxes = []
    for nucleus in np.unique(labels[labels > 0]):
        ys, xs = np.nonzero(labels == nucleus)
        if len(ys) >= MIN_NUCLEUS_PIXELS:
            boxes.append((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))
    return boxes


def write_nuclei_boxes(folder: str | Path) -> Path:
    """Write the nuclei tiles for detection in COCO's layout: `annotations/train.json` and
    `annotations/valid.json` (one category, "nucleus"; a box per labelled nucleus of each
    tile, see `nucleus_boxes`) with the tiles in `images/train/` and `images/valid/`.
    Returns `folder`."""
    import json

    folder = Path(folder)
    tiles = nuclei_tiles("labels")
    # The marker names the boxes' source: folders of connected-component boxes are rewritten.
    contents = f"{sum(len(v) for v in tiles.values())} tiles, labelled nuclei"
    if _done(folder, contents):
        return folder
    (folder / "annotations").mkdir(parents=True, exist_ok=True)
    for split, pairs in tiles.items():
        (folder / "images" / split).mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for index, (image, labels) in enumerate(pairs):
            name = f"{index:04d}.png"
            Image.fromarray(image, mode="L").save(folder / "images" / split / name)
            image_id = index + 1
            images.append({"id": image_id, "file_name": name, "width": TILE, "height": TILE})
            for x0, y0, x1, y1 in nucleus_boxes(labels):
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
    (folder / ".complete").write_text(contents)
    return folder
