"""Build torso's embedded demo data from packages that ship it (run once; output is committed).

- Fashion-MNIST (MIT, Zalando SE) from Debian's `dataset-fashion-mnist`
  (/usr/share/datasets/fashion-mnist): the first 1,000 training and the first 100 test images
  of each of the 10 classes → src/torso/assets/fashion_mnist.npz (10,000 train / 1,000 valid).
- The 2018 Data Science Bowl nuclei image shipped in the stardist wheel (BSD-3):
  `stardist/data/images/img2d.tif` and `mask2d.tif` (512×512, 125 labelled nuclei) →
  src/torso/assets/nuclei.npz (image uint8, mask 0 = background, 1 = nucleus, labels: the
  nucleus each pixel belongs to, 0 = none).

Usage: python scripts/make_demo_data.py FASHION_DIR [STARDIST_WHEEL]  (the wheel: nuclei too)
"""

from __future__ import annotations

import gzip
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

ASSETS = Path(__file__).resolve().parents[1] / "src" / "torso" / "assets"
PER_CLASS = {"train": 1000, "valid": 100}


def read_idx(path: Path) -> np.ndarray:
    data = gzip.decompress(path.read_bytes())
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def balanced(images: np.ndarray, labels: np.ndarray, per_class: int):
    keep = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)])
    keep.sort()
    return images[keep], labels[keep]


def fashion(folder: Path) -> None:
    train_x, train_y = balanced(
        read_idx(folder / "train-images-idx3-ubyte.gz"),
        read_idx(folder / "train-labels-idx1-ubyte.gz"),
        PER_CLASS["train"],
    )
    valid_x, valid_y = balanced(
        read_idx(folder / "t10k-images-idx3-ubyte.gz"),
        read_idx(folder / "t10k-labels-idx1-ubyte.gz"),
        PER_CLASS["valid"],
    )
    np.savez_compressed(
        ASSETS / "fashion_mnist.npz",
        train_images=train_x,
        train_labels=train_y,
        valid_images=valid_x,
        valid_labels=valid_y,
    )


def nuclei(wheel: Path) -> None:
    import tifffile

    with zipfile.ZipFile(wheel) as archive:
        image = tifffile.imread(io.BytesIO(archive.read("stardist/data/images/img2d.tif")))
        labels = tifffile.imread(io.BytesIO(archive.read("stardist/data/images/mask2d.tif")))
    if image.max() > 255:
        image = image.astype(np.float64) * 255 / image.max()
    np.savez_compressed(
        ASSETS / "nuclei.npz",
        image=image.astype(np.uint8),
        mask=(labels > 0).astype(np.uint8),
        labels=labels.astype(np.uint8 if labels.max() <= 255 else np.uint16),
        nuclei=np.array(len(np.unique(labels)) - 1),
    )


if __name__ == "__main__":
    fashion(Path(sys.argv[1]))
    if len(sys.argv) > 2:
        nuclei(Path(sys.argv[2]))
