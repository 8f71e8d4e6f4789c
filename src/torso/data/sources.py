"""Readers: finding the labelled items in a folder or CSV, and splitting them for validation.

Each reader turns the folder the user gives (`root`) into a `Source`; a task chooses its reader
in its `DataLayout` (`torso.data.layout`). Every reader takes the same keyword arguments
(`csv`, `label_delimiter`, `codes`, `allow_outside_paths`) and ignores those it does not use.

- `read_classes`: folders `root/<class>/*.jpg`, split at random by `valid_pct` and `seed`; or
  `root/train/<class>/...` with `root/valid/<class>/...` (or `root/val/...`), a fixed split; or,
  with `csv`, a CSV of one label column. Item targets: class indices.
- `read_labels`: a CSV (default `root/labels.csv`) of one column whose cell holds labels separated
  by `label_delimiter` (an empty cell means no label). Item targets: tuples of class indices.
- `read_numbers`: a CSV (default `root/labels.csv`) whose every other column is a number (one
  target each). Item targets: tuples of floats; `Source.target_names` the column names.
- `read_masks`: `root/images/*` with `root/masks/*` matched by file stem (extensions may differ),
  or the same pair of folders inside `root/train/` and `root/valid/` (or `root/val/`). Class names
  come from `codes` (a list, or a file) or `root/codes.txt` (one name a line; line index = pixel
  value). Item targets: mask paths.

CSV files: a header row, the first column a file name relative to the CSV's folder; an optional
`is_valid` (or `valid`) column of true/false fixes the split. A row naming a file outside the
data folder and the CSV's folder, or a file already listed, is a problem, not an item.
"""

from __future__ import annotations

import csv as csv_module
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from torso.data.decode import is_image_file
from torso.errors import TorsoError

VALID_FOLDER_NAMES = ("valid", "val")
SPLIT_COLUMNS = ("is_valid", "valid")
_TRUE = {"1", "true", "yes", "y", "t", "valid"}
_FALSE = {"0", "false", "no", "n", "f", "train", ""}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the data: the file (or folder) and the reason, in the user's words.

    `kind` names the kind of problem ("image too small", "listed twice", ...) so that reports
    can group many files with the same problem; without it, the reason up to its first " ("
    stands for the kind.
    """

    file: Path
    reason: str
    kind: str | None = None

    @property
    def category(self) -> str:
        """The kind of problem: `kind`, or the reason without its parenthesised details."""
        return self.kind or self.reason.split(" (")[0]

    def __str__(self) -> str:
        return f"{self.file}: {self.reason}"


@dataclass(frozen=True)
class Item:
    """One labelled example.

    `target` is what the reader stores: a class index (`read_classes`), a tuple of class indices
    (`read_labels`), a tuple of floats (`read_numbers`) or the mask's path (`read_masks`).
    `split` is "train", "valid", or None when the random split decides.
    """

    path: Path
    target: object
    split: str | None = None


@dataclass
class Source:
    """The items found under `root`, their class names and the problems seen while listing them.

    `classes`: class (or label, or mask code) names, None when unknown; `target_names`: the names
    of numeric targets; `codes_given`: the mask codes came from the user, not from the masks;
    `class_ids`: the annotations' own number of each class, where they have one (COCO's
    category ids), None otherwise.
    """

    root: Path
    items: list[Item]
    classes: list[str] | None = None
    target_names: list[str] | None = None
    codes_given: bool = False
    problems: list[Problem] = field(default_factory=list)
    class_ids: list[int] | None = None


def visible_files(folder: Path) -> list[Path]:
    """Files under `folder`, recursively, sorted, skipping hidden files and folders."""
    found = []
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if path.is_file():
            found.append(path)
    return sorted(found)


def image_files(folder: Path) -> list[Path]:
    """The image files under `folder` (by extension), as the data sources list them:
    recursively, sorted, hidden files and folders skipped."""
    return [path for path in visible_files(folder) if is_image_file(path)]


def _images_in(folder: Path, problems: list[Problem]) -> list[Path]:
    """Image files under `folder`; every other visible file is recorded as a problem."""
    images = []
    for path in visible_files(folder):
        if is_image_file(path):
            images.append(path)
        else:
            suffix = path.suffix or "no extension"
            problems.append(Problem(path, f"not an image file ({suffix})"))
    return images


def _class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _fixed_split_folders(root: Path) -> tuple[Path, Path] | None:
    train = root / "train"
    if not train.is_dir():
        return None
    for name in VALID_FOLDER_NAMES:
        if (root / name).is_dir():
            return train, root / name
    return None


def _folder_source(root: Path) -> Source:
    problems: list[Problem] = []
    split_folders = _fixed_split_folders(root)
    parts = (
        [(split_folders[0], "train"), (split_folders[1], "valid")]
        if split_folders
        else [(root, None)]
    )
    per_part: list[tuple[str | None, Path, list[Path]]] = []
    for folder, split in parts:
        class_folders = _class_folders(folder)
        if not class_folders:
            raise TorsoError(
                f"'{folder}' has no class folders; put each class's images in its own "
                "subfolder (e.g. cats/ and dogs/), or give a CSV with --csv"
            )
        for class_folder in class_folders:
            images = _images_in(class_folder, problems)
            if not images:
                problems.append(Problem(class_folder, "empty class folder (no images)"))
            per_part.append((split, class_folder, images))
    classes = sorted({class_folder.name for _, class_folder, images in per_part if images})
    index = {name: i for i, name in enumerate(classes)}
    items = [
        Item(path, index[class_folder.name], split)
        for split, class_folder, images in per_part
        for path in images
    ]
    return Source(root, items, classes=classes, problems=problems)


def _parse_split(value: str, csv_path: Path, line: int) -> str:
    text = value.strip().lower()
    if text in _TRUE:
        return "valid"
    if text in _FALSE:
        return "train"
    raise TorsoError(f"'{csv_path}' line {line}: split value '{value}' is not true/false")


#: `parse(cells, where)`: the (column name, cell text) pairs of a row's label columns and
#: "'file.csv' line N" → `(target, None)`, or `(None, reason)` for a row to leave out.
CellParser = Callable[[list[tuple[str, str]], str], tuple[object, str | None]]


def read_csv_rows(csv_path: Path) -> list[list[str]]:
    """The rows of a UTF-8 CSV file; a `TorsoError` naming the file when it is not CSV text."""
    try:
        data = csv_path.read_bytes()
    except OSError as error:
        raise TorsoError(
            f"CSV file '{csv_path}' cannot be read ({error.strerror or error})"
        ) from None
    if b"\x00" in data:
        raise TorsoError(f"'{csv_path}' is not a CSV file (it holds binary data)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise TorsoError(
            f"'{csv_path}' is not a UTF-8 text CSV (undecodable byte at position {error.start}); "
            "save it as UTF-8"
        ) from None
    try:
        return list(csv_module.reader(text.splitlines()))
    except csv_module.Error as error:
        raise TorsoError(f"'{csv_path}' is not a readable CSV file ({error})") from None


def _absolute(path: Path) -> Path:
    """`path` made absolute and normalised ("a/../b" is "b"), without following links."""
    return Path(os.path.normpath(os.path.abspath(path)))


def _is_inside(path: Path, folders: list[Path]) -> bool:
    return any(path == folder or folder in path.parents for folder in folders)


def _csv_items(
    csv_path: Path,
    one_column: bool,
    parse: CellParser,
    root: Path | None = None,
    allow_outside_paths: bool = False,
):
    """The rows of a labels CSV: `(items, label column names, problems)`.

    `one_column`: the data needs exactly one label column; `parse` reads a row's label cells.
    A row whose file lies outside `root` and the CSV's folder is a problem unless
    `allow_outside_paths`; a file listed a second time is a problem (the first row is kept).
    """
    if not csv_path.is_file():
        raise TorsoError(f"CSV file '{csv_path}' not found")
    rows = read_csv_rows(csv_path)
    rows = [row for row in rows if any(cell.strip() for cell in row)]
    if len(rows) < 2:
        raise TorsoError(f"'{csv_path}' needs a header row and at least one data row")
    header = [name.strip() for name in rows[0]]
    split_column = next((i for i, name in enumerate(header) if name.lower() in SPLIT_COLUMNS), None)
    label_columns = [i for i in range(1, len(header)) if i != split_column]
    if not label_columns:
        raise TorsoError(f"'{csv_path}' has no label column after the file column")
    if one_column and len(label_columns) != 1:
        names = ", ".join(header[i] for i in label_columns)
        raise TorsoError(
            f"'{csv_path}' has {len(label_columns)} label columns ({names}); this task needs "
            "exactly one (several numeric targets are read by --task regress)"
        )
    folder = csv_path.parent
    allowed = sorted({_absolute(folder), _absolute(root if root is not None else folder)})
    problems: list[Problem] = []
    items: list[Item] = []
    first_row: dict[Path, tuple[int, list[str]]] = {}
    for line, row in enumerate(rows[1:], start=2):
        row = row + [""] * (len(header) - len(row))
        name = row[0].strip()
        path = Path(os.path.normpath(Path(name) if Path(name).is_absolute() else folder / name))
        where = f"'{csv_path.name}' line {line}"
        absolute = _absolute(path)
        if not allow_outside_paths and not _is_inside(absolute, allowed):
            problems.append(
                Problem(
                    path,
                    f"listed in {where} but outside the data folder '{allowed[0]}' "
                    "(allow it with allow_outside_paths=True / --allow-outside-paths)",
                    kind="file outside the data folder",
                )
            )
            continue
        cells = [(header[i], row[i]) for i in label_columns]
        if absolute in first_row:
            first_line, first_cells = first_row[absolute]
            labels = "the same" if [c for _, c in cells] == first_cells else "different"
            problems.append(
                Problem(
                    path,
                    f"listed twice in '{csv_path.name}': lines {first_line} and {line}, "
                    f"with {labels} labels",
                    kind="file listed twice",
                )
            )
            continue
        first_row[absolute] = (line, [c for _, c in cells])
        split = None
        if split_column is not None:
            split = _parse_split(row[split_column], csv_path, line)
        if not path.is_file():
            problems.append(
                Problem(path, f"listed in {where} but not found", kind="listed file not found")
            )
            continue
        if not is_image_file(path):
            problems.append(Problem(path, f"not an image file ({path.suffix or 'no extension'})"))
            continue
        target, reason = parse(cells, where)
        if reason is not None:
            problems.append(Problem(path, reason, kind="bad label"))
            continue
        items.append(Item(path, target, split))
    return items, [header[i] for i in label_columns], problems


def _indexed(items: list[Item], names: set[str]) -> tuple[list[Item], list[str]]:
    """Items whose targets are names (or tuples of names) with class indices instead."""
    classes = sorted(names)
    index = {name: i for i, name in enumerate(classes)}
    indexed = [
        Item(
            item.path,
            tuple(index[x] for x in item.target)
            if isinstance(item.target, tuple)
            else index[item.target],
            item.split,
        )
        for item in items
    ]
    return indexed, classes


def _csv_path(root: Path, csv: Path | None) -> Path:
    """The labels CSV: `csv`, or `root/labels.csv`; a clear error when there is none."""
    if csv is not None:
        return csv
    default = root / "labels.csv"
    if not default.is_file():
        raise TorsoError(
            f"this data needs a CSV of file names and labels: give --csv, or put 'labels.csv' "
            f"in '{root}'"
        )
    return default


class Reader(Protocol):
    """What a `DataLayout` reads its data with: `root` (a folder) to a `Source`.

    `csv` is the CSV path the user gave (already resolved, see `find_source`) or None;
    `allow_outside_paths` lets a CSV list files outside `root` and the CSV's folder.
    """

    def __call__(
        self,
        root: Path,
        *,
        csv: Path | None = None,
        label_delimiter: str = " ",
        codes: list[str] | str | Path | None = None,
        allow_outside_paths: bool = False,
    ) -> Source: ...


def read_classes(
    root: Path, *, csv: Path | None = None, allow_outside_paths: bool = False, **_options
) -> Source:
    """One class per image: class folders under `root`, or `csv` with one label column.

    Returns a `Source` whose item targets are class indices into `classes` (sorted names).
    """
    if csv is None:
        return _folder_source(root)

    def one_label(cells: list[tuple[str, str]], where: str) -> tuple[object, str | None]:
        label = cells[0][1].strip()
        return (label, None) if label else (None, f"{where}: empty label")

    items, _, problems = _csv_items(csv, True, one_label, root, allow_outside_paths)
    items, classes = _indexed(items, {item.target for item in items})
    return Source(root, items, classes=classes, problems=problems)


def read_labels(
    root: Path,
    *,
    csv: Path | None = None,
    label_delimiter: str = " ",
    allow_outside_paths: bool = False,
    **_options,
) -> Source:
    """Any number of labels per image: a CSV (`csv`, or `root/labels.csv`) of one column whose
    cell holds the labels separated by `label_delimiter`.

    Returns a `Source` whose item targets are tuples of class indices into `classes`.
    """

    def several_labels(cells: list[tuple[str, str]], where: str) -> tuple[object, str | None]:
        cell = cells[0][1]
        labels = [x.strip() for x in cell.split(label_delimiter)] if label_delimiter else [cell]
        return tuple(sorted({x for x in labels if x})), None

    csv_path = _csv_path(root, csv)
    items, _, problems = _csv_items(csv_path, True, several_labels, root, allow_outside_paths)
    items, classes = _indexed(items, {label for item in items for label in item.target})
    return Source(root, items, classes=classes, problems=problems)


def read_numbers(
    root: Path, *, csv: Path | None = None, allow_outside_paths: bool = False, **_options
) -> Source:
    """One or more numbers per image: a CSV (`csv`, or `root/labels.csv`) whose columns after
    the file name are numbers.

    Returns a `Source` whose item targets are tuples of floats, `target_names` the columns.
    """

    def numbers(cells: list[tuple[str, str]], where: str) -> tuple[object, str | None]:
        values = []
        for name, cell in cells:
            try:
                number = float(cell.strip())
            except ValueError:
                number = math.nan
            if not math.isfinite(number):
                reason = f"{where}: target '{name}' is '{cell.strip()}', not a finite number"
                return None, reason
            values.append(number)
        return tuple(values), None

    csv_path = _csv_path(root, csv)
    items, names, problems = _csv_items(csv_path, False, numbers, root, allow_outside_paths)
    return Source(root, items, target_names=names, problems=problems)


def read_codes(codes: list[str] | str | Path | None, root: Path) -> list[str] | None:
    """Class names for segmentation: a list given in code, a codes file, or `root/codes.txt`."""
    if codes is not None and not isinstance(codes, (str, Path)):
        names = [str(name) for name in codes]
        if not names:
            raise TorsoError("codes: the list of class names is empty")
        return names
    if codes is None:
        path = root / "codes.txt"
        if not path.is_file():
            return None
    else:
        path = Path(codes) if Path(codes).is_absolute() else root / codes
        if not path.is_file():
            raise TorsoError(f"codes file '{path}' not found")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise TorsoError(
            f"codes file '{path}' is not UTF-8 text (undecodable byte at position {error.start})"
        ) from None
    names = [line.strip() for line in text.splitlines()]
    while names and not names[-1]:
        names.pop()
    if not names:
        raise TorsoError(f"codes file '{path}' lists no class names")
    return names


def read_masks(
    root: Path,
    *,
    csv: Path | None = None,
    codes: list[str] | str | Path | None = None,
    **_options,
) -> Source:
    """A class for every pixel: `images/` and `masks/` folders whose files share a stem.

    Returns a `Source` whose item targets are mask paths; `classes` are the codes (from `codes`
    or `root/codes.txt`, `codes_given` True) or None, to be found from the mask values.
    """
    if csv is not None:
        raise TorsoError("segmentation data is read from images/ and masks/ folders, not a CSV")
    problems: list[Problem] = []
    split_folders = _fixed_split_folders(root)
    parts = (
        [(split_folders[0], "train"), (split_folders[1], "valid")]
        if split_folders
        else [(root, None)]
    )
    items: list[Item] = []
    for folder, split in parts:
        images_folder, masks_folder = folder / "images", folder / "masks"
        for needed in (images_folder, masks_folder):
            if not needed.is_dir():
                raise TorsoError(
                    f"'{needed}' not found; segmentation data needs images/ and masks/ folders "
                    "whose files share a stem (images/a.jpg with masks/a.png)"
                )
        masks: dict[str, list[Path]] = {}
        for path in _images_in(masks_folder, problems):
            masks.setdefault(path.relative_to(masks_folder).with_suffix("").as_posix(), []).append(
                path
            )
        for path in _images_in(images_folder, problems):
            stem = path.relative_to(images_folder).with_suffix("").as_posix()
            found = masks.get(stem, [])
            if not found:
                reason = f"mask missing (no file '{stem}.*' in '{masks_folder}')"
                problems.append(Problem(path, reason))
            elif len(found) > 1:
                names = ", ".join(p.name for p in found)
                problems.append(Problem(path, f"several masks share its stem: {names}"))
            else:
                items.append(Item(path, found[0], split))
    names = read_codes(codes, root)
    return Source(root, items, classes=names, codes_given=names is not None, problems=problems)


def has_images_and_masks(root: Path) -> bool:
    """True when `root` (or `root/train`) holds `images/` and `masks/` folders."""
    return any(
        (folder / "images").is_dir() and (folder / "masks").is_dir()
        for folder in (root, root / "train")
    )


def resolve_csv(root: Path, csv: str | Path) -> Path:
    """The CSV file `csv` names: an absolute path; else a path from the current folder when a
    file is there; else a path inside `root`. A `TorsoError` names both places when neither
    holds the file."""
    given = Path(csv)
    if given.is_absolute() or given.is_file():
        return given
    inside = root / given
    if not inside.is_file():
        raise TorsoError(f"CSV file '{given}' not found (neither from here nor as '{inside}')")
    return inside


def find_source(
    path: str | Path,
    read: Reader,
    csv: str | Path | None = None,
    label_delimiter: str = " ",
    codes: list[str] | str | Path | None = None,
    allow_outside_paths: bool = False,
) -> Source:
    """List the labelled items under `path` with `read` (a task's reader), and the problems seen.

    `path` (relative to the current folder) is a folder, or a CSV file (read as `csv`; its
    folder is the data folder). `csv` is a path from the current folder when that file exists,
    else a path inside `path`. The file names in a CSV are relative to the CSV's folder; rows
    naming files outside the data folder are problems unless `allow_outside_paths`. Raises
    `TorsoError` for what makes the whole data unusable (missing folder, wrong layout).
    """
    root = Path(path)
    if not root.exists():
        raise TorsoError(f"data path '{root}' not found")
    csv_path = None
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise TorsoError(f"data path '{root}' is a file; give a folder or a .csv file")
        if csv is not None and _absolute(resolve_csv(root.parent, csv)) != _absolute(root):
            raise TorsoError(f"data path '{root}' is a CSV file; give either it or --csv '{csv}'")
        csv_path, root = root, root.parent
    elif csv is not None:
        csv_path = resolve_csv(root, csv)
    return read(
        root,
        csv=csv_path,
        label_delimiter=label_delimiter,
        codes=codes,
        allow_outside_paths=allow_outside_paths,
    )


def split_items(
    items: list[Item], valid_pct: float = 0.2, seed: int = 0
) -> tuple[list[Item], list[Item]]:
    """Training and validation items: the fixed split when the items carry one, else random.

    The random split is a function of the sorted file list, `valid_pct` and `seed` only.
    """
    if not 0.0 <= valid_pct < 1.0:
        raise TorsoError(f"valid_pct={valid_pct}: must be at least 0 and below 1")
    if items and all(item.split is not None for item in items):
        return (
            [item for item in items if item.split == "train"],
            [item for item in items if item.split == "valid"],
        )
    ordered = sorted(items, key=lambda item: str(item.path))
    generator = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(len(ordered), generator=generator).tolist()
    count = int(round(len(ordered) * valid_pct))
    valid_positions = set(order[:count])
    train = [item for i, item in enumerate(ordered) if i not in valid_positions]
    valid = [item for i, item in enumerate(ordered) if i in valid_positions]
    return train, valid
