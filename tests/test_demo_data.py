"""The embedded demo data: balanced, complete, and with validation kept apart from training."""

import numpy as np
from PIL import Image

from torso.data.demo import (
    FASHION_CLASSES,
    HELD_OUT_ROWS,
    TILE,
    nuclei_tiles,
    tile_origins,
    write_fashion_mnist,
    write_nuclei,
)


def test_fashion_mnist_folders_are_class_balanced(tmp_path):
    root = write_fashion_mnist(tmp_path / "fm")
    for split, per_class in (("train", 300), ("valid", 100)):
        counts = {c: len(list((root / split / c).glob("*.png"))) for c in FASHION_CLASSES}
        assert set(counts.values()) == {per_class}, counts
    sample = Image.open(next((root / "valid" / "trouser").glob("*.png")))
    assert sample.size == (28, 28) and sample.mode == "L"
    # A second call reuses the folder instead of writing it again.
    marker = (root / ".complete").stat().st_mtime_ns
    write_fashion_mnist(root)
    assert (root / ".complete").stat().st_mtime_ns == marker


def test_nuclei_validation_band_is_never_seen_in_training():
    origins = tile_origins(512, 512)
    assert all(y + TILE <= 512 - HELD_OUT_ROWS for y, _ in origins["train"])
    assert all(y >= 512 - HELD_OUT_ROWS for y, _ in origins["valid"])
    assert len(origins["valid"]) == 4 and len(origins["train"]) == 9 * 13
    tiles = nuclei_tiles()
    for image, mask in tiles["train"] + tiles["valid"]:
        assert image.shape == mask.shape == (TILE, TILE)
        assert set(np.unique(mask)) <= {0, 1}
    nucleus_share = np.mean([m.mean() for _, m in tiles["valid"]])
    assert 0.05 < nucleus_share < 0.6  # both classes present in validation


def test_nuclei_folder_layout(tmp_path):
    root = write_nuclei(tmp_path / "nuclei")
    assert (root / "codes.txt").read_text().split() == ["background", "nucleus"]
    for split in ("train", "valid"):
        images = sorted(p.name for p in (root / split / "images").glob("*.png"))
        masks = sorted(p.name for p in (root / split / "masks").glob("*.png"))
        assert images == masks and images
