"""`load_data`: from a folder or CSV to seeded, reproducible training and validation loaders.

Batches are `(images, targets)` with images float32 `(N, C, size, size)` in [0, 1] (never
normalised here: the model does that with its body's stats), Siamese batches
`((images_a, images_b), targets)`.

Reproducibility: epoch `e` of the training loader (its order and every augmentation) is a
function of (seed, e) only. The training loader counts its epochs itself (the k-th iteration is
epoch k); `dls.set_epoch(e)` makes the next iteration epoch `e`, e.g. when resuming.

Distributed training: pass `train_sampler=lambda dataset: DistributedSampler(dataset, ...,
seed=seed)` (and `valid_sampler=...` likewise). Any sampler with a `set_epoch(epoch)` method is
told the epoch before each iteration, so a `DistributedSampler` reshuffles every epoch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, SequentialSampler

from torso.data.cache import PresizeCache
from torso.data.checks import (
    DEFAULT_MIN_IMAGE_SIZE,
    DataReport,
    check_min_image_size,
    inspect_items,
    kind_counts,
    problem_counts,
    problem_lines,
)
from torso.data.datasets import ImageDataset, PairDataset
from torso.data.decode import SUPPORTED_CHANNELS, read_image
from torso.data.layout import DataLayout, TaskWithData, task_layout
from torso.data.sources import Item, Problem, find_source, split_items
from torso.data.transforms import Augmentation, check_resize_mode, resize_square
from torso.errors import TorsoError

SamplerFactory = Callable[[Dataset], Sampler]


def default_workers() -> int:
    """Worker processes (or threads) to use by default: the cores this process may run on,
    at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


def auto_workers(batches: int, *, final_in_cache: bool) -> int:
    """Loader workers when none are asked for: the usable cores (at most 8, at most the number
    of training batches), or none when `final_in_cache`.

    `final_in_cache`: the presize cache holds every image at its final size and nothing is
    augmented, so from the second epoch on a batch is a copy out of memory. A worker would then
    only hold a core the model could use (`torso train` gives the model the cores the workers
    leave free); the first epoch decodes in the training process instead.
    """
    if final_in_cache or batches <= 1:
        return 0
    return min(default_workers(), batches)


class DataCheckError(TorsoError):
    """The data has problems (listed in `report`); `skip_bad=True` skips those files instead."""

    exit_code = 1  # as `torso check` when it finds problems

    def __init__(self, report: DataReport) -> None:
        self.report = report
        shown = problem_lines(report.problems, shown_per_kind=3)
        super().__init__(
            f"{problem_counts(report.problems)}, in the data in '{report.root}' (fix them, or "
            "skip the bad files with skip_bad=True / --skip-bad; `torso check --json` lists "
            "every file):\n" + "\n".join(shown)
        )


class EpochSampler(Sampler[int]):
    """A shuffled order of `length` indices that is a function of (seed, epoch) only."""

    def __init__(self, length: int, seed: int = 0) -> None:
        self.length = length
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the order of `epoch` on the next iteration."""
        self.epoch = epoch

    def __iter__(self):
        state = np.random.SeedSequence([int(self.seed), int(self.epoch)]).generate_state(1)
        generator = torch.Generator().manual_seed(int(state[0]))
        return iter(torch.randperm(self.length, generator=generator).tolist())

    def __len__(self) -> int:
        return self.length


class EpochLoader(DataLoader):
    """A torch `DataLoader` that tells its dataset and sampler the epoch before each iteration.

    Its k-th iteration is epoch k unless `set_epoch(e)` chose the next one. `epoch` is the
    epoch of the latest iteration.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.next_epoch = 0
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration epoch `epoch`."""
        self.next_epoch = int(epoch)

    def __iter__(self):
        self.epoch = self.next_epoch
        self.next_epoch += 1
        self.dataset.epoch = self.epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(self.epoch)
        return super().__iter__()


class Collate:
    """Stack samples into a batch; uint8 images become float32 in [0, 1] here, once per batch.

    With `pairs`, samples are `((image_a, image_b), target)` and batches
    `((images_a, images_b), targets)`.
    """

    def __init__(self, pairs: bool = False) -> None:
        self.pairs = pairs

    @staticmethod
    def _images(images: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.stack(list(images)).to(torch.float32).div_(255.0)

    def __call__(self, samples: list) -> tuple:
        targets = [target for _, target in samples]
        # dicts (boxes and labels per image) stay a list; tensors are stacked
        targets = targets if isinstance(targets[0], dict) else torch.stack(targets)
        if self.pairs:
            firsts = self._images([pair[0] for pair, _ in samples])
            seconds = self._images([pair[1] for pair, _ in samples])
            return (firsts, seconds), targets
        return self._images([image for image, _ in samples]), targets


class DataLoaders:
    """Training and validation loaders with what the model and the report need to know.

    Attributes: `train` (an `EpochLoader`), `valid` (a `DataLoader`, empty when there is no
    validation set), `task` (the task's name), `layout` (its `DataLayout`), `classes` (class
    names; the codes of masks; None for numeric targets), `class_ids` (the annotations' own
    number of each class where they have one: COCO's category ids; else None),
    `target_names` (regress), `num_outputs`, `size`, `in_channels`, `resize`, `ignore_index`,
    `seed`, `train_items` / `valid_items` (file paths), `report` (the `DataReport` of the check,
    or None), `skipped` (problems whose files were left out), `cache` (the training and
    validation `PresizeCache`, or None).
    """

    def __init__(self, **fields) -> None:
        self.train: EpochLoader = fields.pop("train")
        self.valid: DataLoader = fields.pop("valid")
        self.task: str = fields.pop("task")
        self.layout: DataLayout = fields.pop("layout")
        self.classes: list[str] | None = fields.pop("classes")
        self.class_ids: list[int] | None = fields.pop("class_ids")
        self.target_names: list[str] | None = fields.pop("target_names")
        self.num_outputs: int = fields.pop("num_outputs")
        self.size: int = fields.pop("size")
        self.in_channels: int = fields.pop("in_channels")
        self.resize: str = fields.pop("resize")
        self.ignore_index: int = fields.pop("ignore_index")
        self.seed: int = fields.pop("seed")
        self.train_items: list[Path] = fields.pop("train_items")
        self.valid_items: list[Path] = fields.pop("valid_items")
        self.report: DataReport | None = fields.pop("report")
        self.skipped: list[Problem] = fields.pop("skipped")
        self.caches: list[PresizeCache] = fields.pop("caches")
        self.cache_note: str = fields.pop("cache_note")
        if fields:
            raise TypeError(f"unknown DataLoaders fields: {', '.join(fields)}")

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration of `train` epoch `epoch` (its order and augmentations)."""
        self.train.set_epoch(epoch)

    @property
    def cache_bytes(self) -> int:
        """Bytes held by the presize caches (0 without cache)."""
        return sum(cache.nbytes for cache in self.caches)

    def describe(self) -> str:
        """One paragraph for a person: task, classes, split sizes, batches, cache, skipped."""
        names = self.classes or self.target_names or []
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        lines = [
            f"{self.task}: {self.num_outputs} output(s) ({shown}); "
            f"{len(self.train_items)} training and {len(self.valid_items)} validation images "
            f"at {self.size}x{self.size}, {self.in_channels} channel(s), resize {self.resize}",
            f"batches of {self.train.batch_size}, {self.train.num_workers} loader worker(s); "
            + self.cache_note,
        ]
        if self.skipped:
            kinds = kind_counts(self.skipped)
            lines.append(f"skipped {len(self.skipped)} bad file(s): {kinds} (see `torso check`)")
        return "\n".join(lines)


def _positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise TorsoError(f"{name}={value!r}: must be a positive whole number")
    return value


def _drop_bad(items: list[Item], bad: set[Path], masks: bool) -> list[Item]:
    """The items whose files (image, and mask when `masks`) are not in `bad`."""
    return [
        item for item in items if item.path not in bad and not (masks and Path(item.target) in bad)
    ]


def _make_cache(count, shape, masks, sizes, cache_dir, notes) -> PresizeCache | None:
    if count == 0:
        return None
    try:
        cache = PresizeCache(count, shape, masks=masks, directory=cache_dir, sizes=sizes)
    except MemoryError as error:
        notes.append(f"no presize cache ({error})")
        return None
    return cache


def load_data(
    path: str | Path,
    task: str | TaskWithData = "classify",
    size: int = 224,
    batch_size: int = 64,
    num_workers: int | None = None,
    seed: int = 0,
    valid_pct: float = 0.2,
    augment: bool | Augmentation = True,
    cache: bool = True,
    skip_bad: bool = False,
    in_channels: int = 3,
    resize: str = "squish",
    csv: str | Path | None = None,
    label_delimiter: str = " ",
    codes: list[str] | str | Path | None = None,
    ignore_index: int = 255,
    *,
    presize: float = 1.25,
    cache_dir: str | Path | None = None,
    check: bool = True,
    min_image_size: int = DEFAULT_MIN_IMAGE_SIZE,
    allow_outside_paths: bool = False,
    train_sampler: SamplerFactory | None = None,
    valid_sampler: SamplerFactory | None = None,
    pin_memory: bool | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> DataLoaders:
    """Read the data under `path` for `task` and return seeded training and validation loaders.

    `task`: a registered task's name ("classify", "multilabel", "regress", "segment",
    "siamese", ...; see `torso.registry`) or a task object; its `data_layout()` says how the
    data is read (`torso.data.layout`). Images become float32 `(N, in_channels, size, size)` in
    [0, 1]; targets: classify int64 `(N,)`; multilabel float32 `(N, K)` of 0/1; regress float32
    `(N, T)`; segment int64 `(N, size, size)` with `ignore_index` for void; siamese
    `((images_a, images_b), int64 (N,))`, 1 = same class.

    `augment` is True (the default `Augmentation`), False, or an `Augmentation`. With `cache`,
    each image is decoded once and kept presized (`presize` times `size`) as uint8; see
    `torso.data.cache`. `check` reads every file first (as `torso check` does) and raises
    `DataCheckError` listing the problems, or with `skip_bad` leaves those files out and lists
    them in `dls.skipped`; images whose shorter side is under `min_image_size` pixels are
    problems. CSV rows that name a file outside the data folder are problems unless
    `allow_outside_paths`. `path` is a folder or a CSV file; `csv` a path from the current
    folder when that file exists, else inside `path`. `train_sampler` / `valid_sampler` are
    factories called with the dataset, e.g. for a `DistributedSampler`; the default training
    order is shuffled by (seed, epoch). `progress(done, total)` is called while the check
    reads the files. `num_workers` defaults to the usable cores (at most 8, at most the number
    of training batches), and to none when the cache holds the final images (no augmentation;
    see `auto_workers`).
    """
    size = _positive_int("size", size)
    batch_size = _positive_int("batch_size", batch_size)
    if in_channels not in SUPPORTED_CHANNELS:
        raise TorsoError(f"in_channels={in_channels}: images can be read with 1, 3 or 4 channels")
    check_resize_mode(resize)
    check_min_image_size(min_image_size)
    task_name, layout = task_layout(task)
    masks = layout.targets.masks
    if masks and not 0 <= ignore_index <= 255:
        raise TorsoError(f"ignore_index={ignore_index}: must be between 0 and 255")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise TorsoError(f"seed={seed!r}: must be a whole number, 0 or more")
    if presize < 1.0:
        raise TorsoError(f"presize={presize}: must be at least 1 (a factor of size)")
    if num_workers is not None and num_workers < 0:
        raise TorsoError(f"num_workers={num_workers}: must be 0 or more")
    if augment is True:
        augmentation: Augmentation | None = Augmentation()
    elif augment is False or augment is None:
        augmentation = None
    elif isinstance(augment, Augmentation):
        augmentation = augment
    else:
        raise TorsoError(f"augment={augment!r}: give True, False or an Augmentation")

    source = find_source(
        path,
        layout.read,
        csv=csv,
        label_delimiter=label_delimiter,
        codes=codes,
        allow_outside_paths=allow_outside_paths,
    )
    train, valid = split_items(source.items, valid_pct=valid_pct, seed=seed)
    report = None
    skipped: list[Problem] = []
    if check:
        report = inspect_items(
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
        if report.problems and not skip_bad:
            raise DataCheckError(report)
        skipped = list(report.problems)
        train = _drop_bad(train, report.bad_files, masks)
        valid = _drop_bad(valid, report.bad_files, masks)
    if not train:
        raise TorsoError(f"no usable training images found in '{source.root}'")

    mask_values = sorted(report.mask_pixels) if report is not None else None
    classes, num_outputs = layout.outputs(source, mask_values, ignore_index)

    presize_side = max(size, math.ceil(size * presize)) if augmentation is not None else size
    notes: list[str] = []
    train_cache = valid_cache = None
    if cache:  # (boxes: each image's original size, from which its boxes are moved again)
        boxes = layout.targets.boxes
        train_cache = _make_cache(
            len(train), (in_channels, presize_side, presize_side), masks, boxes, cache_dir, notes
        )
        valid_cache = _make_cache(
            len(valid), (in_channels, size, size), masks, boxes, cache_dir, notes
        )
    caches = [c for c in (train_cache, valid_cache) if c is not None]
    if caches:
        total = sum(c.nbytes for c in caches) / 2**20
        where = sorted({"shared memory" if c.location == "memory" else c.location for c in caches})
        notes.insert(0, f"presize cache {total:.1f} MiB in {', '.join(where)}")
    elif not cache:
        notes.append("no presize cache")

    common = {
        "targets": layout.targets,
        "size": size,
        "in_channels": in_channels,
        "resize": resize,
        "seed": seed,
        "num_classes": len(source.classes or []),
        "ignore_index": ignore_index,
    }
    train_images = ImageDataset(
        train, augmentation=augmentation, presize=presize_side, cache=train_cache, **common
    )
    valid_images = ImageDataset(valid, augmentation=None, cache=valid_cache, **common)
    train_set: Dataset = train_images
    valid_set: Dataset = valid_images
    if layout.pairs:
        train_set = PairDataset(train_images)
        valid_set = PairDataset(valid_images, fixed_epoch=0)

    batches = len(train) // batch_size if len(train) >= batch_size else 1
    if num_workers is None:
        num_workers = auto_workers(
            batches, final_in_cache=augmentation is None and train_cache is not None
        )
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    collate = Collate(layout.pairs)
    train_loader = EpochLoader(
        train_set,
        batch_size=batch_size,
        sampler=train_sampler(train_set) if train_sampler else EpochSampler(len(train_set), seed),
        num_workers=num_workers,
        collate_fn=collate,
        drop_last=len(train) >= batch_size,
        pin_memory=pin_memory,
    )
    valid_loader = DataLoader(
        valid_set,
        batch_size=batch_size,
        sampler=valid_sampler(valid_set) if valid_sampler else SequentialSampler(valid_set),
        num_workers=num_workers if len(valid) > batch_size else 0,
        collate_fn=collate,
        pin_memory=pin_memory,
    )
    return DataLoaders(
        train=train_loader,
        valid=valid_loader,
        task=task_name,
        layout=layout,
        classes=list(classes) if classes is not None else None,
        class_ids=source.class_ids,
        target_names=source.target_names,
        num_outputs=num_outputs,
        size=size,
        in_channels=in_channels,
        resize=resize,
        ignore_index=ignore_index,
        seed=seed,
        train_items=[item.path for item in train],
        valid_items=[item.path for item in valid],
        report=report,
        skipped=skipped,
        caches=caches,
        cache_note="; ".join(notes),
    )


def load_images(
    paths: Sequence[str | Path], size: int, in_channels: int = 3, resize: str = "squish"
) -> torch.Tensor:
    """Read image files exactly as validation does: float32 `(N, in_channels, size, size)`, [0, 1].

    A file that cannot be read raises `TorsoError` naming it.
    """
    size = _positive_int("size", size)
    check_resize_mode(resize)
    images = []
    for path in paths:
        image = read_image(Path(path), in_channels)
        images.append(resize_square(image, size, resize)[0])
    if not images:
        return torch.empty(0, in_channels, size, size)
    return Collate._images(images)
