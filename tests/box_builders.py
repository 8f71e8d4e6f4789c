"""A small generated detection set (coloured rectangles on noise) and writers of its boxes as
COCO, Pascal VOC, YOLO and labelme annotations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("blue", "red")
COLOURS = {"red": (230, 40, 40), "blue": (40, 60, 230)}


def shapes(
    count: int, width: int = 64, height: int = 48, seed: int = 0, classes: int = 2
) -> list[dict]:
    """`count` images: dim noise with 0 to 2 rectangles each (the first image has none), of
    the first `classes` colours.

    Returns records `{"name", "image", "boxes": [(x0, y0, x1, y1)] integer pixels, "labels"}`
    with labels indexing `CLASSES`.
    """
    generator = np.random.default_rng(seed)
    records = []
    for index in range(count):
        pixels = (generator.random((height, width, 3)) * 90).astype(np.uint8)
        boxes, labels = [], []
        for _ in range(0 if index == 0 else 1 + index % 2):
            w, h = int(generator.integers(12, 28)), int(generator.integers(10, 22))
            x0, y0 = int(generator.integers(0, width - w)), int(generator.integers(0, height - h))
            label = int(generator.integers(0, 2)) % classes
            pixels[y0 : y0 + h, x0 : x0 + w] = COLOURS[CLASSES[label]]
            boxes.append((x0, y0, x0 + w, y0 + h))
            labels.append(label)
        records.append(
            {
                "name": f"img{index:03d}.png",
                "image": Image.fromarray(pixels),
                "boxes": boxes,
                "labels": labels,
            }
        )
    return records


def write_coco(
    root: Path,
    records: list[dict],
    images_folder: str = "images",
    category_ids: tuple[int, ...] = (1, 2),
) -> Path:
    """COCO annotations of `records`; `category_ids[label]` is the category id of each class of
    `CLASSES`."""
    (root / images_folder).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id, record in enumerate(records, start=1):
        record["image"].save(root / images_folder / record["name"])
        width, height = record["image"].size
        images.append(
            {"id": image_id, "file_name": record["name"], "width": width, "height": height}
        )
        for (x0, y0, x1, y1), label in zip(record["boxes"], record["labels"], strict=True):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_ids[label],
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i, "name": name} for i, name in zip(category_ids, CLASSES, strict=True)]
    document = {"images": images, "annotations": annotations, "categories": categories}
    path = root / "annotations" / "instances.json"
    path.write_text(json.dumps(document))
    return path


def write_voc(root: Path, records: list[dict]) -> None:
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    for record in records:
        record["image"].save(root / "JPEGImages" / record["name"])
        width, height = record["image"].size
        objects = "".join(
            f"<object><name>{CLASSES[label]}</name><bndbox><xmin>{x0 + 1}</xmin>"
            f"<ymin>{y0 + 1}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
            for (x0, y0, x1, y1), label in zip(record["boxes"], record["labels"], strict=True)
        )
        xml = (
            f"<annotation><filename>{record['name']}</filename><size><width>{width}</width>"
            f"<height>{height}</height><depth>3</depth></size>{objects}</annotation>"
        )
        (root / "Annotations" / f"{Path(record['name']).stem}.xml").write_text(xml)


def write_yolo(root: Path, records: list[dict]) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    for record in records:
        record["image"].save(root / "images" / record["name"])
        width, height = record["image"].size
        lines = [
            f"{label} {(x0 + x1) / 2 / width} {(y0 + y1) / 2 / height} "
            f"{(x1 - x0) / width} {(y1 - y0) / height}"
            for (x0, y0, x1, y1), label in zip(record["boxes"], record["labels"], strict=True)
        ]
        (root / "labels" / f"{Path(record['name']).stem}.txt").write_text("\n".join(lines))
    names = "\n".join(f"  - {name}" for name in CLASSES)
    (root / "data.yaml").write_text(f"names:\n{names}\n")


def write_labelme(root: Path, records: list[dict]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for record in records:
        record["image"].save(root / record["name"])
        width, height = record["image"].size
        shapes_ = [
            {"label": CLASSES[label], "points": [[x0, y0], [x1, y1]], "shape_type": "rectangle"}
            for (x0, y0, x1, y1), label in zip(record["boxes"], record["labels"], strict=True)
        ]
        document = {
            "shapes": shapes_,
            "imagePath": record["name"],
            "imageWidth": width,
            "imageHeight": height,
        }
        (root / f"{Path(record['name']).stem}.json").write_text(json.dumps(document))
