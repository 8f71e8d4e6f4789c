"""Input checks: read every file once and report what is wrong with it, naming the file.

`check_data(path, task=...)` is what `torso check` prints and what `load_data` runs first.
"""

from __future__ import annotations

import hashlib
import statistics
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from torso.data.decode import ImageReadError, converted, decode_image, mask_to_array
from torso.data.layout import (
    DataLayout,
    TaskWithData,
    listed,
    mask_values_problem,
    task_layout,
)
from torso.data.sources import Item, Problem, Source, find_source, split_items
from torso.errors import TorsoError

DEFAULT_MIN_IMAGE_SIZE = 16
#: Files shown for each kind of problem before "... and N more files with the same problem".
SHOWN_PER_KIND = 5


def problem_kinds(problems: list[Problem]) -> dict[str, list[Problem]]:
    """The problems grouped by kind (`Problem.category`), the most frequent kind first."""
    groups: dict[str, list[Problem]] = {}
    for problem in problems:
        groups.setdefault(problem.category, []).append(problem)
    return dict(sorted(groups.items(), key=lambda group: -len(group[1])))


def kind_counts(problems: list[Problem]) -> str:
    """How many problems of each kind: "40 image too small, 2 not an image file"."""
    return ", ".join(f"{len(group)} {kind}" for kind, group in problem_kinds(problems).items())


def problem_counts(problems: list[Problem]) -> str:
    """One line: the number of problems and how many of each kind."""
    return f"{len(problems)} problem(s): {kind_counts(problems)}"


def problem_lines(
    problems: list[Problem], shown_per_kind: int | None = SHOWN_PER_KIND
) -> list[str]:
    """The problems as indented lines, grouped by kind; `shown_per_kind` files of each kind
    (all when None), then "... and N more files with the same problem"."""
    lines = []
    for kind, group in problem_kinds(problems).items():
        lines.append(f"  {kind} ({len(group)}):")
        shown = group if shown_per_kind is None else group[:shown_per_kind]
        lines.extend(f"    {problem}" for problem in shown)
        if len(group) > len(shown):
            lines.append(f"    ... and {len(group) - len(shown)} more files with the same problem")
    return lines


@dataclass
class _FileResult:
    item: Item
    size: tuple[int, int] | None = None  # (width, height) after EXIF orientation
    mode: str | None = None
    digest: bytes | None = None
    problems: list[Problem] = field(default_factory=list)
    mask_values: Counter = field(default_factory=Counter)


@dataclass
class DataReport:
    """What `check_data` found: a summary of the data and every problem with its file and reason.

    `task` is the task's name; `images[split]` is the number of images per split;
    `counts[split][name]` the number of images per class (or label, for multilabel data where
    an image has any number of them: `labels_per_image` is then True) and split; `modes`
    counts image modes (`RGB`, `L`, `I;16`, ...); `sizes` are the (width, height) of every
    readable image; `masks` is True when items have masks, and `mask_pixels[value]` counts
    mask pixels per value over all masks.
    """

    root: Path
    task: str
    classes: list[str] | None
    counts: dict[str, Counter]
    modes: Counter
    sizes: list[tuple[int, int]]
    mask_pixels: Counter
    problems: list[Problem]
    ignore_index: int = 255
    masks: bool = False
    images: dict[str, int] = field(default_factory=dict)
    labels_per_image: bool = False
    train_items: list[Item] = field(default_factory=list, repr=False)
    valid_items: list[Item] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    @property
    def bad_files(self) -> set[Path]:
        """Every file or folder named by a problem."""
        return {problem.file for problem in self.problems}

    def summary(self) -> str:
        """The summary as lines of text: images per class and split, sizes, modes, mask shares."""
        lines = [f"{self.task} data in '{self.root}'"]
        total = {
            split: self.images.get(split, sum(counter.values()))
            for split, counter in self.counts.items()
        }
        lines.append(
            "images: " + ", ".join(f"{split} {total[split]}" for split in self.counts)
            if self.counts
            else "images: none"
        )
        if self.classes is not None and not self.masks:
            width = max((len(name) for name in self.classes), default=5)
            splits = list(self.counts)
            if self.labels_per_image:
                lines.append("labels per class (an image may have any number):")
            lines.append(f"  {'class':<{width}}  " + "  ".join(f"{s:>6}" for s in splits))
            for name in self.classes:
                cells = "  ".join(f"{self.counts[s].get(name, 0):>6}" for s in splits)
                lines.append(f"  {name:<{width}}  {cells}")
        if self.sizes:
            widths = [w for w, _ in self.sizes]
            heights = [h for _, h in self.sizes]
            lines.append(
                f"sizes: width {min(widths)}-{max(widths)} (median {statistics.median(widths):g}),"
                f" height {min(heights)}-{max(heights)} (median {statistics.median(heights):g})"
            )
        if self.modes:
            lines.append(
                "modes: " + ", ".join(f"{mode} {n}" for mode, n in self.modes.most_common())
            )
        if self.mask_pixels:
            all_pixels = sum(self.mask_pixels.values())
            lines.append(f"mask values: {listed(sorted(self.mask_pixels), limit=40)}")
            lines.append("mask pixels:")
            for value in sorted(self.mask_pixels):
                if value == self.ignore_index:
                    name = "(ignore)"
                elif self.classes is not None and 0 <= value < len(self.classes):
                    name = self.classes[value]
                else:
                    name = "(not a code)"
                share = 100.0 * self.mask_pixels[value] / all_pixels
                lines.append(f"  {value:>5} {name:<20} {share:6.2f}%")
        return "\n".join(lines)

    def text(self, shown_per_kind: int | None = SHOWN_PER_KIND) -> str:
        """The summary, the problems grouped by kind (`shown_per_kind` files of each, all when
        None) and a last line counting the problems of each kind."""
        lines = [self.summary()]
        if self.problems:
            lines.append("problems:")
            lines.extend(problem_lines(self.problems, shown_per_kind))
            lines.append(problem_counts(self.problems))
        else:
            lines.append("no problems found")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.text()


def check_min_image_size(value: int) -> int:
    """`value` when it is a whole number of pixels, at least 1; else a `TorsoError`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TorsoError(f"min_image_size={value!r}: must be a whole number of pixels, at least 1")
    return value


def _inspect_image(item: Item, min_image_size: int) -> _FileResult:
    """Read and decode the image of `item` as training does; a bad file becomes a problem."""
    result = _FileResult(item)
    path = item.path
    try:
        data = path.read_bytes()
    except OSError as error:
        result.problems.append(Problem(path, f"unreadable file ({error.strerror or error})"))
        return result
    if not data:
        result.problems.append(Problem(path, "empty file (0 bytes)"))
        return result
    result.digest = hashlib.blake2b(data, digest_size=16).digest()
    try:
        # The decoding training does, from a fresh open (scaled DCT still reads the whole JPEG
        # stream), and the conversion every image gets.
        decoded = decode_image(path, draft_size=(64, 64), data=data)
        converted(decoded.image, 3, path)
    except ImageReadError as error:
        result.problems.append(Problem(path, error.reason))
        return result
    result.mode, result.size = decoded.mode, decoded.size
    width, height = result.size
    if min(width, height) < min_image_size:
        result.problems.append(
            Problem(
                path, f"image too small ({width}x{height}; the minimum side is {min_image_size} px)"
            )
        )
    return result


def _inspect_mask(result: _FileResult, codes: list[str] | None, ignore_index: int) -> None:
    item = result.item
    mask_path = Path(item.target)
    try:
        decoded = decode_image(mask_path)  # as `read_mask` reads it for training
    except ImageReadError as error:
        result.problems.append(Problem(mask_path, "mask: " + error.reason))
        return
    try:
        values = mask_to_array(decoded.image, mask_path)
    except TorsoError as error:
        result.problems.append(Problem(mask_path, str(error), kind="mask not single-channel"))
        return
    size = decoded.size
    if result.size is not None and size != result.size:
        result.problems.append(
            Problem(
                mask_path,
                f"mask is {size[0]}x{size[1]} but its image "
                f"'{item.path.name}' is {result.size[0]}x{result.size[1]}",
                kind="mask size differs from its image",
            )
        )
    counts = np.bincount(values.ravel()) if values.min() >= 0 else None
    if counts is None:
        result.problems.append(Problem(mask_path, "mask has negative values"))
        return
    present = {int(v): int(n) for v, n in enumerate(counts) if n}
    result.mask_values.update(present)
    if codes is not None:
        bad = sorted(v for v in present if v >= len(codes) and v != ignore_index)
        if bad:
            shown = ", ".join(str(v) for v in bad[:5]) + (", ..." if len(bad) > 5 else "")
            result.problems.append(
                Problem(
                    mask_path,
                    f"mask value {shown} not in the {len(codes)} codes "
                    f"(valid: 0-{len(codes) - 1}, and {ignore_index} for ignore)",
                    kind="mask value not in the codes",
                )
            )


def inspect_items(
    source: Source,
    layout: DataLayout,
    train: list[Item],
    valid: list[Item],
    *,
    task_name: str,
    min_image_size: int = DEFAULT_MIN_IMAGE_SIZE,
    ignore_index: int = 255,
    num_workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> DataReport:
    """Read every image (and mask, when `layout.targets.masks`) of `train` and `valid` and build
    the report of task `task_name`, in `num_workers` threads (default: the usable cores).

    `progress(done, total)`, if given, is called as files are read.
    """
    from torso.data.loaders import default_workers  # the loaders import this module

    masks = layout.targets.masks
    codes = source.classes if masks and source.codes_given else None

    def inspect(item: Item) -> _FileResult:
        result = _inspect_image(item, min_image_size)
        if masks:
            _inspect_mask(result, codes, ignore_index)
        return result

    workers = num_workers if num_workers else default_workers()
    everything = [(item, "train") for item in train] + [(item, "valid") for item in valid]
    results = []
    with ThreadPoolExecutor(max_workers=workers) as pool:  # PIL decodes without the GIL
        for result in pool.map(inspect, [item for item, _ in everything]):
            results.append(result)
            if progress is not None:
                progress(len(results), len(everything))
    problems = list(source.problems)
    counts: dict[str, Counter] = {"train": Counter()}
    if valid:
        counts["valid"] = Counter()
    images = dict.fromkeys(counts, 0)
    labels_per_image = False
    modes: Counter = Counter()
    sizes: list[tuple[int, int]] = []
    mask_pixels: Counter = Counter()
    first_train_copy: dict[bytes, Path] = {}
    first_mask: dict[int, Path] = {}
    for (item, split), result in zip(everything, results, strict=True):
        problems.extend(result.problems)
        for value in result.mask_values:
            first_mask.setdefault(value, Path(item.target))
        if result.mode is not None and result.size is not None:  # the image itself was readable
            modes[result.mode] += 1
            sizes.append(result.size)
        mask_pixels.update(result.mask_values)
        names = layout.targets.names(item.target, source.classes)
        counts[split].update(names)
        images[split] += 1
        labels_per_image = labels_per_image or len(names) != 1
        if split == "train" and result.digest is not None:
            first_train_copy.setdefault(result.digest, item.path)
    for (item, split), result in zip(everything, results, strict=True):
        if split == "valid" and result.digest in first_train_copy:
            twin = first_train_copy[result.digest]
            problems.append(
                Problem(
                    item.path,
                    f"identical to training file '{twin}' (train/valid leakage)",
                    kind="train/valid leakage",
                )
            )
    if masks and not source.codes_given:
        problem = mask_values_problem(list(mask_pixels), ignore_index)
        if problem is not None:
            problems.append(
                Problem(
                    source.root,
                    _with_stray_files(problem, first_mask, ignore_index),
                    kind="mask values without codes",
                )
            )
    return DataReport(
        root=source.root,
        task=task_name,
        classes=source.classes,
        counts=counts,
        modes=modes,
        sizes=sizes,
        mask_pixels=mask_pixels,
        problems=problems,
        ignore_index=ignore_index,
        masks=masks,
        images=images,
        labels_per_image=labels_per_image,
        train_items=train,
        valid_items=valid,
    )


def _with_stray_files(problem: str, first_mask: dict[int, Path], ignore_index: int) -> str:
    """`problem`, and which mask holds each value above the widest gap between values."""
    values = sorted(value for value in first_mask if value != ignore_index)
    gaps = [(values[i + 1] - values[i], i + 1) for i in range(len(values) - 1)]
    stray = values[max(gaps)[1] :][:3] if gaps else []
    where = ", ".join(f"{value} first in '{first_mask[value].name}'" for value in stray)
    return f"{problem} ({where})" if where else problem


def check_data(
    path: str | Path,
    task: str | TaskWithData = "classify",
    csv: str | Path | None = None,
    label_delimiter: str = " ",
    codes: list[str] | str | Path | None = None,
    ignore_index: int = 255,
    valid_pct: float = 0.2,
    seed: int = 0,
    min_image_size: int = DEFAULT_MIN_IMAGE_SIZE,
    num_workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    allow_outside_paths: bool = False,
) -> DataReport:
    """Scan the data under `path` as `load_data` would read it and report every problem.

    Reads each file once (in `num_workers` threads): unreadable, corrupt, truncated or empty
    files, non-image files, images smaller than `min_image_size`, CSV rows naming a file twice
    or a file outside the data folder (unless `allow_outside_paths`), missing masks, masks
    whose size differs from their image or whose values are not in the codes, empty class
    folders, and validation files identical to a training file. The split is the one
    `load_data` makes with the same `valid_pct` and `seed`. `task` is a registered task's
    name or a task object (its `data_layout()` says how the data is read). `progress(done,
    total)` is called as files are read. Raises `TorsoError` only when the data cannot be read
    at all.
    """
    check_min_image_size(min_image_size)
    task_name, layout = task_layout(task)
    source = find_source(
        path,
        layout.read,
        csv=csv,
        label_delimiter=label_delimiter,
        codes=codes,
        allow_outside_paths=allow_outside_paths,
    )
    train, valid = split_items(source.items, valid_pct=valid_pct, seed=seed)
    return inspect_items(
        source,
        layout,
        train,
        valid,
        task_name=task_name,
        min_image_size=min_image_size,
        ignore_index=ignore_index,
        num_workers=num_workers,
        progress=progress,
    )
