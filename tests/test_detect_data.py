"""Box annotations: COCO, VOC, YOLO and labelme read to the same boxes; boxes follow the image
through resizing and augmentation; bad annotations are named."""

from __future__ import annotations

import json

import pytest
import torch
from box_builders import CLASSES, shapes, write_coco, write_labelme, write_voc, write_yolo

from torso.data import DataLayout, load_data
from torso.data.boxes import BoxTargets, box_format, read_boxes


class BoxTask:
    name = "boxes"

    def data_layout(self):
        return DataLayout(read=read_boxes, targets=BoxTargets())


WRITERS = {"coco": write_coco, "voc": write_voc, "yolo": write_yolo, "labelme": write_labelme}


def pixel_boxes(source):
    """{file name: (boxes in pixels rounded, labels)} of a Source."""
    found = {}
    for item in source.items:
        boxes = torch.tensor(item.target.boxes).reshape(-1, 4)
        if item.target.normalized:
            boxes = boxes * torch.tensor([64, 48, 64, 48])
        found[item.path.name] = (boxes.round().int().tolist(), list(item.target.labels))
    return found


@pytest.mark.parametrize("kind", list(WRITERS))
def test_every_format_reads_the_same_boxes(tmp_path, kind):
    records = shapes(6)
    WRITERS[kind](tmp_path, records)
    assert box_format(tmp_path) == kind
    source = read_boxes(tmp_path)
    assert source.problems == []
    assert source.classes == list(CLASSES)
    expected = {r["name"]: ([list(b) for b in r["boxes"]], r["labels"]) for r in records}
    assert pixel_boxes(source) == expected
    assert expected["img000.png"] == ([], [])  # an image without objects is kept


def test_loader_targets_are_boxes_in_pixels_of_the_resized_image(tmp_path):
    records = shapes(8)
    write_yolo(tmp_path, records)
    dls = load_data(
        tmp_path,
        task=BoxTask(),
        size=32,
        batch_size=2,
        augment=False,
        valid_pct=0.25,
        num_workers=0,
    )
    assert dls.classes == list(CLASSES)
    seen = 0
    for loader in (dls.train, dls.valid):
        for images, targets in loader:
            assert images.shape[1:] == (3, 32, 32) and isinstance(targets, list)
            for target in targets:
                assert target["boxes"].dtype == torch.float32
                assert target["labels"].dtype == torch.int64
            seen += len(targets)
    assert seen == 8
    # squish 64x48 -> 32x32: x halves, y times 2/3
    dataset = dls.valid.dataset
    for index, item in enumerate(dataset.items):
        record = next(r for r in records if r["name"] == item.path.name)
        expected = torch.tensor(record["boxes"], dtype=torch.float32).reshape(-1, 4)
        expected = expected * torch.tensor([0.5, 32 / 48, 0.5, 32 / 48])
        _, target = dataset[index]
        torch.testing.assert_close(target["boxes"], expected, atol=1e-4, rtol=0)
        assert target["labels"].tolist() == record["labels"]


def test_augmented_boxes_follow_the_image(tmp_path):
    """After random crops, flips, rotations and warps each box still frames its coloured
    rectangle (the noise is dim, the rectangles bright), and no box leaves the image."""
    write_coco(tmp_path, shapes(12, seed=3))
    dls = load_data(
        tmp_path, task=BoxTask(), size=48, batch_size=4, valid_pct=0.0, num_workers=0, seed=1
    )
    checked = 0
    for epoch in range(3):
        dls.set_epoch(epoch)
        for images, targets in dls.train:
            for image, target in zip(images, targets, strict=True):
                boxes = target["boxes"]
                assert (boxes[:, 2:] > boxes[:, :2]).all()
                assert ((boxes >= 0) & (boxes <= 48)).all()
                for x0, y0, x1, y1 in boxes.round().int().tolist():
                    if (x1 - x0) * (y1 - y0) < 40:
                        continue
                    inner = image[:, y0 + 1 : y1 - 1, x0 + 1 : x1 - 1].amax(dim=0)
                    assert float(inner.mean()) > 0.6  # bright: the box is on its rectangle
                    checked += 1
    assert checked > 20


def test_bad_coco_annotations_are_named(tmp_path):
    records = shapes(3)
    path = write_coco(tmp_path, records)
    document = json.loads(path.read_text())
    base = {"iscrowd": 0, "area": 1}
    document["annotations"] += [
        {"id": 101, "image_id": 2, "category_id": 1, "bbox": [50, 10, 30, 10], **base},
        {"id": 102, "image_id": 2, "category_id": 1, "bbox": [5, 10, 0, 10], **base},
        {"id": 103, "image_id": 2, "category_id": 9, "bbox": [5, 10, 4, 4], **base},
        {"id": 104, "image_id": 77, "category_id": 1, "bbox": [5, 10, 4, 4], **base},
        {"id": 105, "image_id": 2, "category_id": 1, "bbox": "5 10 4 4", **base},
        {"id": 106, "image_id": 2, "category_id": 1, "bbox": [1, 1, 9, 9], "iscrowd": 1},
    ]
    document["images"].append({"id": 5, "file_name": "gone.png", "width": 64, "height": 48})
    path.write_text(json.dumps(document))
    source = read_boxes(tmp_path)
    reasons = sorted(p.reason for p in source.problems)
    assert all(p.file == path for p in source.problems)
    assert reasons == [
        "annotation 101 (image 'img001.png'): box [50, 10, 80, 20] is outside the image (64x48)",
        "annotation 102 (image 'img001.png'): box [5, 10, 5, 20] has zero or negative size",
        "annotation 103 (image 'img001.png'): unknown category id 9",
        "annotation 104: unknown image id 77",
        "annotation 105 (image 'img001.png'): no bbox [x, y, width, height]",
        "image 5 'gone.png' missing",
    ]
    # the good boxes of the image stay; the crowd region is not an object
    item = next(i for i in source.items if i.path.name == "img001.png")
    assert len(item.target.boxes) == len(records[1]["boxes"])


def test_bad_yolo_and_voc_annotations_are_named(tmp_path):
    write_yolo(tmp_path / "yolo", shapes(3))
    label = tmp_path / "yolo" / "labels" / "img001.txt"
    label.write_text(label.read_text() + "\n5 0.5 0.5 0.1 0.1\n0 0.9 0.5 0.4 0.1\nnonsense")
    problems = [str(p) for p in read_boxes(tmp_path / "yolo").problems]
    assert problems == [
        f"{label}: line 3: unknown class 5",
        f"{label}: line 4: box [0.7, 0.45, 1.1, 0.55] is outside the image (1x1)",
        f"{label}: line 5: not 'class cx cy w h'",
    ]
    write_voc(tmp_path / "voc", shapes(2))
    xml = tmp_path / "voc" / "Annotations" / "img001.xml"
    xml.write_text(xml.read_text().replace("<xmax>", "<xmax>-", 1))
    (tmp_path / "voc" / "JPEGImages" / "img000.png").unlink()
    problems = sorted(str(p) for p in read_boxes(tmp_path / "voc").problems)
    assert len(problems) == 2
    assert "img000.xml: image 'img000.png' missing in JPEGImages/" in problems[0]
    assert "img001.xml: object 0" in problems[1] and "zero or negative size" in problems[1]


def test_boxes_a_hair_outside_their_image_are_clipped(tmp_path):
    records = shapes(2)
    records[1]["boxes"], records[1]["labels"] = [(40, 30, 64, 48)], [0]
    write_yolo(tmp_path, records)
    label = tmp_path / "labels" / "img001.txt"
    label.write_text("0 0.8125 0.8125 0.3752 0.3752\n")  # reaches 1.0001 of the side
    source = read_boxes(tmp_path)
    assert source.problems == []
    box = next(i for i in source.items if i.path.name == "img001.png").target.boxes[0]
    assert box[2] == 1.0 and box[3] == 1.0


@pytest.mark.parametrize("resize", ["squish", "crop", "pad"])
def test_the_presize_cache_keeps_boxes_with_their_images(tmp_path, resize):
    """With the cache, epochs after the first read the presized images from it and move the
    boxes from the image's original size again; the random crop and flip then act on both:
    the same images and boxes (to 1 px) as decoding every epoch, for the same seed and epoch."""
    from torso.data.transforms import Augmentation

    write_coco(tmp_path, shapes(10, width=72, height=40, seed=5))
    options = {"task": BoxTask(), "size": 32, "batch_size": 4, "valid_pct": 0.3, "seed": 2}
    options.update(resize=resize, augment=Augmentation(min_scale=0.6), num_workers=0)
    cached = load_data(tmp_path, cache=True, **options)
    plain = load_data(tmp_path, cache=False, **options)
    assert plain.cache_bytes == 0 and len(cached.caches) == 2
    for epoch in range(3):  # epoch 0 fills the cache, the others read it
        cached.set_epoch(epoch)
        plain.set_epoch(epoch)
        for loaders in ((cached.train, plain.train), (cached.valid, plain.valid)):
            for (images, targets), (expected_images, expected) in zip(*loaders, strict=True):
                assert torch.equal(images, expected_images)
                for target, truth in zip(targets, expected, strict=True):
                    assert target["labels"].tolist() == truth["labels"].tolist()
                    torch.testing.assert_close(target["boxes"], truth["boxes"], atol=1, rtol=0)
        if epoch == 0:
            filled = [cache.filled for cache in cached.caches]
            assert filled == [4, 3]  # one batch of the 7 training images (drop_last), 3 valid
    assert cached.caches[1].original_size(0) == (40, 72)
