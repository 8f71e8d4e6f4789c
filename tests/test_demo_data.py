"""The embedded demo data: balanced, complete, and with validation kept apart from training."""

import numpy as np
from PIL import Image

from torso.data.demo import (
    FASHION_CLASSES,
    HELD_OUT_ROWS,
    MIN_NUCLEUS_PIXELS,
    TILE,
    nuclei_tiles,
    nucleus_boxes,
    tile_origins,
    write_fashion_mnist,
    write_nuclei,
    write_nuclei_boxes,
)


def test_fashion_mnist_folders_are_class_balanced(tmp_path):
    root = write_fashion_mnist(tmp_path / "fm")
    for split, per_class in (("train", 1000), ("valid", 100)):
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


def test_nucleus_boxes_are_the_labelled_nuclei():
    labels = np.zeros((20, 30), dtype=np.uint8)
    labels[2:6, 3:9] = 7  # 24 px
    labels[2:6, 9:12] = 4  # 12 px, touching nucleus 7 side by side: still its own box
    labels[15:17, 20:22] = 9  # 4 px: too small to be a nucleus
    assert nucleus_boxes(labels) == [(9, 2, 12, 6), (3, 2, 9, 6)]
    assert MIN_NUCLEUS_PIXELS > 4


def test_nuclei_labels_tile_like_the_mask():
    masks, labels = nuclei_tiles(), nuclei_tiles("labels")
    for split in ("train", "valid"):
        for (image, mask), (same_image, label) in zip(masks[split], labels[split], strict=True):
            assert np.array_equal(image, same_image)
            assert np.array_equal(mask, (label > 0).astype(mask.dtype))
    # touching nuclei the mask cannot tell apart: more labelled nuclei than mask components
    assert len(np.unique(np.concatenate([t for _, t in labels["valid"]]))) > 2


def test_nuclei_boxes_folder_is_valid_coco(tmp_path):
    import json

    from torso.data.boxes import read_boxes

    root = write_nuclei_boxes(tmp_path / "nuclei-boxes")
    tiles = nuclei_tiles()
    for split in ("train", "valid"):
        document = json.loads((root / "annotations" / f"{split}.json").read_text())
        assert [c["name"] for c in document["categories"]] == ["nucleus"]
        assert len(document["images"]) == len(tiles[split])
        assert len(document["annotations"]) > 2 * len(tiles[split])  # nuclei in every tile
        for image in document["images"]:
            assert (root / "images" / split / image["file_name"]).is_file()
        for annotation in document["annotations"]:
            x, y, w, h = annotation["bbox"]
            assert 0 <= x and 0 <= y and w >= 1 and h >= 1
            assert x + w <= TILE and y + h <= TILE  # inside its tile
        # each box holds mask pixels touching all four of its edges
        first = [a["bbox"] for a in document["annotations"] if a["image_id"] == 1]
        mask = tiles[split][0][1] > 0
        for x, y, w, h in first:
            inside = mask[y : y + h, x : x + w]
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any()
            assert inside[:, -1].any()
    # validation tiles are pixels training never sees
    train = {image.tobytes() for image, _ in tiles["train"]}
    assert not any(image.tobytes() in train for image, _ in tiles["valid"])
    # one box a labelled nucleus of at least MIN_NUCLEUS_PIXELS in the tile
    labels = nuclei_tiles("labels")["valid"][0][1]
    sizes = np.bincount(labels.ravel())[1:]
    first_valid = json.loads((root / "annotations" / "valid.json").read_text())["annotations"]
    assert sum(a["image_id"] == 1 for a in first_valid) == int((sizes >= MIN_NUCLEUS_PIXELS).sum())
    source = read_boxes(root)
    assert not source.problems and source.classes == ["nucleus"]
    assert sum(item.split == "valid" for item in source.items) == len(tiles["valid"])
