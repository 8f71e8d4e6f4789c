"""Bounding boxes: reading COCO, Pascal VOC, YOLO and labelme annotations, and their targets.

`read_boxes(root)` recognises the layout of `root` and returns a `Source` whose item targets are
`Boxes` (xyxy boxes and class indices; YOLO's as fractions of the image's size):

- COCO: `annotations/*.json` and the images in `images/`, `images/<json stem>/` or `root/`;
  classes: the categories, by id (kept as the source's `class_ids`, so predictions can name
  them by COCO's ids again); a json whose name holds "val" is the validation set.
- Pascal VOC: `Annotations/*.xml` and `JPEGImages/`; classes: the object names, sorted; the
  split from `ImageSets/Main/{train,val}.txt` when present.
- YOLO: `images/` and `labels/*.txt` (`class cx cy w h` as fractions of the image), or
  `images/{train,val}/` with `labels/{train,val}/`; classes: `data.yaml`'s `names` (or
  `classes.txt`).
- labelme: `*.json` next to the images (rectangles, or polygons by their extent); classes: the
  labels, sorted.

Bad annotations are left out of the items and recorded as problems naming the file and the
annotation (`torso check DATA --task detect` lists them): a box outside the image, of zero or
negative size, of an unknown class or category id, an annotation of an unknown image, an
image file that is missing. Images with no objects are kept.

`BoxTargets` carries the boxes through the image's resizing and augmentation as a
`torchvision.tv_tensors.BoundingBoxes` (every torchvision v2 geometric transform moves them with
the image); boxes cut by a crop are clipped, and those left without area dropped
(`SanitizeBoundingBoxes`). A sample's target is `{"boxes": float32 (K, 4) xyxy in pixels of
the transformed image, "labels": int64 (K,)}`; a batch's targets are a list of those.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from torso.data.decode import is_image_file
from torso.data.layout import Targets
from torso.data.sources import Item, Problem, Source
from torso.errors import TorsoError

BoxTuple = tuple[float, float, float, float]
#: How far (a fraction of the image's side) a box may reach past its image before it is an error.
BOX_SLACK = 0.002


@dataclass(frozen=True)
class Boxes:
    """The objects of one image: `boxes` xyxy (pixels, or fractions of the image's width and
    height when `normalized`), `labels` their class indices."""

    boxes: tuple[BoxTuple, ...] = ()
    labels: tuple[int, ...] = ()
    normalized: bool = False


class _Collector:
    """Boxes checked one by one against their image's size and the classes; bad ones become
    problems naming the annotation file and the annotation."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems

    def box(
        self,
        where: Path,
        what: str,
        box: BoxTuple,
        size: tuple[float, float] | None,
        label: int | None,
        found: tuple[list[BoxTuple], list[int]],
    ) -> None:
        """Check `box` (xyxy) of class `label` (None: unknown, already recorded) in an image of
        `size` (width, height; None: not known) and add it to `found` if it is good.

        Rounding in annotation tools leaves boxes a hair outside their image (x + w = 640.02 in
        a 640-pixel image): up to `BOX_SLACK` of the side is clipped, not reported."""
        slack = BOX_SLACK
        x0, y0, x1, y1 = box
        shown = "[" + ", ".join(f"{v:g}" for v in box) + "]"
        if label is None:
            return
        if not all(v == v and abs(v) != float("inf") for v in box):
            self.problems.append(Problem(where, f"{what}: box {shown} is not a number"))
        elif x1 <= x0 or y1 <= y0:
            self.problems.append(Problem(where, f"{what}: box {shown} has zero or negative size"))
        elif size is not None and (
            min(x0, y0) < -slack * max(size)
            or x1 > size[0] * (1 + slack)
            or y1 > size[1] * (1 + slack)
            or x0 >= size[0]
            or y0 >= size[1]
        ):
            self.problems.append(
                Problem(
                    where, f"{what}: box {shown} is outside the image ({size[0]:g}x{size[1]:g})"
                )
            )
        else:
            if size is not None:  # within the slack: clipped to the image
                box = (max(x0, 0.0), max(y0, 0.0), min(x1, size[0]), min(y1, size[1]))
            found[0].append(box)
            found[1].append(label)

    def label(self, where: Path, what: str, name: object, classes: dict) -> int | None:
        if name in classes:
            return classes[name]
        self.problems.append(Problem(where, f"{what}: unknown class {name!r}"))
        return None


def _split_of(name: str) -> str:
    return "valid" if "val" in name.lower() else "train"


# -- COCO ------------------------------------------------------------------------------------
def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise TorsoError(f"cannot read annotation file '{path}': {error}") from None


def _coco_image_path(root: Path, json_path: Path, file_name: str) -> Path:
    candidates = [
        root / "images" / file_name,
        root / "images" / json_path.stem.removeprefix("instances_") / file_name,
        root / file_name,
        json_path.parent / file_name,
    ]
    return next((path for path in candidates if path.is_file()), candidates[0])


def _read_coco(
    root: Path, problems: list[Problem]
) -> tuple[list[Item], list[str], list[int] | None]:
    files = sorted((root / "annotations").glob("*.json"))
    if not files:
        raise TorsoError(f"no COCO json files in '{root / 'annotations'}'")
    check = _Collector(problems)
    categories: dict[int, str] = {}
    documents = []
    for path in files:
        document = _read_json(path)
        if not isinstance(document, dict) or "images" not in document:
            raise TorsoError(f"'{path}' is not a COCO annotation file (no \"images\" list)")
        documents.append((path, document))
        for category in document.get("categories", []):
            categories.setdefault(int(category["id"]), str(category["name"]))
    ids = sorted(categories)
    names = [categories[i] for i in ids]
    index_of = {category_id: index for index, category_id in enumerate(ids)}
    items: list[Item] = []
    for path, document in documents:
        split = _split_of(path.stem) if len(files) > 1 else None
        images = {}
        for image in document["images"]:
            images[image["id"]] = image
        found: dict[object, tuple[list[BoxTuple], list[int]]] = {i: ([], []) for i in images}
        for annotation in document.get("annotations", []):
            what = f"annotation {annotation.get('id')}"
            image = images.get(annotation.get("image_id"))
            if image is None:
                problems.append(
                    Problem(path, f"{what}: unknown image id {annotation.get('image_id')!r}")
                )
                continue
            what += f" (image '{image['file_name']}')"
            category = annotation.get("category_id")
            label = index_of.get(category)
            if label is None:
                problems.append(Problem(path, f"{what}: unknown category id {category!r}"))
            if annotation.get("iscrowd"):
                continue  # a crowd region, not one object: COCO's evaluation ignores it too
            try:
                x, y, w, h = (float(v) for v in annotation["bbox"])
            except (KeyError, TypeError, ValueError):
                problems.append(Problem(path, f"{what}: no bbox [x, y, width, height]"))
                continue
            size = (float(image["width"]), float(image["height"])) if "width" in image else None
            check.box(path, what, (x, y, x + w, y + h), size, label, found[image["id"]])
        for image_id, image in images.items():
            image_path = _coco_image_path(root, path, image["file_name"])
            if not image_path.is_file():
                problems.append(Problem(path, f"image {image_id} '{image['file_name']}' missing"))
                continue
            boxes, labels = found[image_id]
            items.append(Item(image_path, Boxes(tuple(boxes), tuple(labels)), split))
    return items, names, ids


# -- Pascal VOC ------------------------------------------------------------------------------
def _read_voc(
    root: Path, problems: list[Problem]
) -> tuple[list[Item], list[str], list[int] | None]:
    check = _Collector(problems)
    parsed = []
    for path in sorted((root / "Annotations").glob("*.xml")):
        try:
            tree = ElementTree.parse(path).getroot()
        except (OSError, ElementTree.ParseError) as error:
            problems.append(Problem(path, f"unreadable annotation ({error})"))
            continue
        parsed.append((path, tree))
    names = sorted(
        {(obj.findtext("name") or "").strip() for _, t in parsed for obj in t.iter("object")}
    )
    index_of = {name: index for index, name in enumerate(names)}
    splits: dict[str, str] = {}
    for split, file in (("train", "train.txt"), ("valid", "val.txt")):
        listing = root / "ImageSets" / "Main" / file
        if listing.is_file():
            for line in listing.read_text().split():
                splits[line.strip()] = split
    items: list[Item] = []
    for path, tree in parsed:
        file_name = tree.findtext("filename") or f"{path.stem}.jpg"
        image_path = root / "JPEGImages" / file_name
        if not image_path.is_file():
            matches = [p for p in (root / "JPEGImages").glob(f"{path.stem}.*") if is_image_file(p)]
            if not matches:
                problems.append(Problem(path, f"image '{file_name}' missing in JPEGImages/"))
                continue
            image_path = matches[0]
        size = None
        if tree.find("size") is not None:
            width, height = tree.findtext("size/width"), tree.findtext("size/height")
            if width and height and float(width) > 0 and float(height) > 0:
                size = (float(width), float(height))
        found: tuple[list[BoxTuple], list[int]] = ([], [])
        for number, obj in enumerate(tree.iter("object")):
            name = (obj.findtext("name") or "").strip()
            what = f"object {number} ({name})"
            try:
                box = tuple(
                    float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")
                )
            except (TypeError, ValueError):
                problems.append(Problem(path, f"{what}: no bndbox with xmin, ymin, xmax, ymax"))
                continue
            # VOC's pixel coordinates are 1-based and inclusive
            box = (box[0] - 1, box[1] - 1, box[2], box[3])
            check.box(path, what, box, size, check.label(path, what, name, index_of), found)
        if splits and path.stem not in splits:
            continue
        items.append(
            Item(image_path, Boxes(tuple(found[0]), tuple(found[1])), splits.get(path.stem))
        )
    return items, names, None


# -- YOLO ------------------------------------------------------------------------------------
def _yolo_names(root: Path) -> list[str] | None:
    for name in ("data.yaml", "dataset.yaml"):
        path = root / name
        if path.is_file():
            import yaml

            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (OSError, yaml.YAMLError) as error:
                raise TorsoError(f"cannot read '{path}': {error}") from None
            names = data.get("names") if isinstance(data, dict) else None
            if isinstance(names, dict):
                return [str(names[k]) for k in sorted(names)]
            if isinstance(names, list):
                return [str(n) for n in names]
            raise TorsoError(f"'{path}' has no names list")
    if (root / "classes.txt").is_file():
        return [
            line.strip() for line in (root / "classes.txt").read_text().splitlines() if line.strip()
        ]
    return None


def _read_yolo(
    root: Path, problems: list[Problem]
) -> tuple[list[Item], list[str], list[int] | None]:
    check = _Collector(problems)
    names = _yolo_names(root)
    images_root, labels_root = root / "images", root / "labels"
    parts = [
        (images_root / s, labels_root / s, _split_of(s))
        for s in ("train", "val", "valid")
        if (images_root / s).is_dir()
    ]
    if not parts:
        parts = [(images_root, labels_root, None)]
    items: list[Item] = []
    highest = -1
    for images, labels, split in parts:
        for image_path in sorted(p for p in images.rglob("*") if p.is_file() and is_image_file(p)):
            label_path = labels / image_path.relative_to(images).with_suffix(".txt")
            found: tuple[list[BoxTuple], list[int]] = ([], [])
            lines = label_path.read_text().splitlines() if label_path.is_file() else []
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                what = f"line {number}"
                fields = line.split()
                try:
                    label, cx, cy, w, h = int(fields[0]), *(float(v) for v in fields[1:5])
                except (ValueError, IndexError):
                    problems.append(Problem(label_path, f"{what}: not 'class cx cy w h'"))
                    continue
                if label < 0 or (names is not None and label >= len(names)):
                    problems.append(Problem(label_path, f"{what}: unknown class {label}"))
                    continue
                highest = max(highest, label)
                box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
                check.box(label_path, what, box, (1.0, 1.0), label, found)
            items.append(Item(image_path, Boxes(tuple(found[0]), tuple(found[1]), True), split))
    if names is None:
        names = [str(i) for i in range(highest + 1)]
    return items, names, None


# -- labelme ---------------------------------------------------------------------------------
def _labelme_files(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("*.json") if not p.name.startswith("."))


def _read_labelme(
    root: Path, problems: list[Problem]
) -> tuple[list[Item], list[str], list[int] | None]:
    check = _Collector(problems)
    documents = [(path, _read_json(path)) for path in _labelme_files(root)]
    names = sorted({str(s.get("label")) for _, d in documents for s in d.get("shapes", [])})
    index_of = {name: index for index, name in enumerate(names)}
    items: list[Item] = []
    for path, document in documents:
        image_path = path.parent / str(document.get("imagePath") or f"{path.stem}.jpg")
        if not image_path.is_file():
            problems.append(Problem(path, f"image '{image_path.name}' missing"))
            continue
        size = (
            (float(document["imageWidth"]), float(document["imageHeight"]))
            if "imageWidth" in document
            else None
        )
        found: tuple[list[BoxTuple], list[int]] = ([], [])
        for number, shape in enumerate(document.get("shapes", [])):
            label = str(shape.get("label"))
            what = f"shape {number} ({label})"
            points = shape.get("points") or []
            if len(points) < 2:
                problems.append(Problem(path, f"{what}: fewer than 2 points"))
                continue
            xs, ys = [float(p[0]) for p in points], [float(p[1]) for p in points]
            box = (min(xs), min(ys), max(xs), max(ys))
            check.box(path, what, box, size, check.label(path, what, label, index_of), found)
        items.append(Item(image_path, Boxes(tuple(found[0]), tuple(found[1]))))
    return items, names, None


# -- the reader ------------------------------------------------------------------------------
def box_format(root: Path) -> str | None:
    """Which annotation layout `root` has: "voc", "coco", "yolo", "labelme", or None."""
    root = Path(root)
    if (root / "Annotations").is_dir() and (root / "JPEGImages").is_dir():
        return "voc"
    if (root / "annotations").is_dir() and any((root / "annotations").glob("*.json")):
        return "coco"
    if (root / "images").is_dir() and (root / "labels").is_dir():
        return "yolo"
    if root.is_dir() and any(p.suffix == ".json" for p in root.iterdir()):
        return "labelme"
    return None


def has_boxes(root: Path) -> bool:
    """True when `root` holds box annotations torso reads (`torso check --task auto`)."""
    return box_format(root) in ("voc", "coco", "yolo")


#: Each layout's reader: (items, class names, the classes' own ids or None).
_READERS: dict[
    str, Callable[[Path, list[Problem]], tuple[list[Item], list[str], list[int] | None]]
] = {
    "coco": _read_coco,
    "voc": _read_voc,
    "yolo": _read_yolo,
    "labelme": _read_labelme,
}


def read_boxes(root: Path, *, csv: Path | None = None, **_options) -> Source:
    """The images and boxes under `root`, in the layout it has (see the module's table)."""
    if csv is not None:
        raise TorsoError(
            "box annotations are read from COCO, VOC, YOLO or labelme files, not a CSV"
        )
    kind = box_format(root)
    if kind is None:
        raise TorsoError(
            f"no box annotations found in '{root}': give COCO (annotations/*.json), Pascal VOC "
            "(Annotations/ + JPEGImages/), YOLO (images/ + labels/) or labelme (*.json) data"
        )
    problems: list[Problem] = []
    items, names, ids = _READERS[kind](Path(root), problems)
    if items and any(item.split is None for item in items):
        items = [Item(item.path, item.target) for item in items]  # a random split for all
    return Source(Path(root), items, classes=names, problems=problems, class_ids=ids)


class BoxTargets(Targets):
    """Boxes and labels per image: `{"boxes": float32 (K, 4) xyxy, "labels": int64 (K,)}`;
    a batch's targets are a list of those (`boxes` True: transformed with the image)."""

    boxes = True

    def geometry(self, target: Boxes, height: int, width: int) -> tv_tensors.BoundingBoxes:
        """The item's boxes in pixels of its image (`height` x `width`), as a
        `BoundingBoxes` the image's transforms move along."""
        boxes = torch.tensor(target.boxes, dtype=torch.float32).reshape(-1, 4)
        if target.normalized:
            boxes = boxes * torch.tensor([width, height, width, height], dtype=torch.float32)
        return tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width))

    def encode(self, target: object, mask: object, num_classes: int) -> dict[str, torch.Tensor]:
        labels = torch.tensor(target.labels, dtype=torch.int64)
        if mask is None:  # not transformed: only happens for items read without their image
            raise TorsoError("box targets need their image's geometry")
        sample = {"boxes": v2.functional.clamp_bounding_boxes(mask), "labels": labels}
        sample = v2.SanitizeBoundingBoxes(min_size=1.0)(sample)
        return {"boxes": sample["boxes"].as_subclass(torch.Tensor), "labels": sample["labels"]}

    def names(self, target: object, classes: list[str] | None) -> list[str]:
        return [classes[label] for label in target.labels] or ["(no object)"]

    def caption(
        self, target: object, classes: list[str] | None, target_names: list[str] | None
    ) -> str:
        labels = target["labels"].tolist()
        return ", ".join(classes[i] for i in labels) if labels else "(no object)"
