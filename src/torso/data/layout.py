"""What a task's data looks like: how it is read, how its targets become tensors.

`torso.data` never looks at a task's name. A task says which data it reads through the small
protocol `TaskWithData` (a `name` and a `data_layout()` method), which returns a `DataLayout`
built from the generic pieces below and the readers of `torso.data.sources`:

| task | reader | targets | pairs | looks like |
| --- | --- | --- | --- | --- |
| classify | `read_classes` | `ClassTargets` | | |
| multilabel | `read_labels` | `LabelTargets` | | |
| regress | `read_numbers` | `NumberTargets` | | |
| segment | `read_masks` | `MaskTargets` | | `has_images_and_masks` |
| siamese | `read_classes` | `ClassTargets` | yes | |
| detect | `read_boxes` | `BoxTargets` | | `has_boxes` (`torso.data.boxes`) |

The loaders, the datasets, the checks and `show_batch` ask the layout, and only the layout:
`read` lists the items, `targets` encodes, counts and captions them (and says whether they are
masks to read, check, cache and transform with their image), `pairs` makes same/different
pairs of class-labelled items, and `looks_like` lets `torso check --task auto` recognise data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from torso.data.sources import Reader, Source
from torso.errors import TorsoError
from torso.registry import get_task

#: The classes of a pair's target: 0 different, 1 same.
PAIR_CLASSES = ("different", "same")
#: Without codes, mask values 0 ... max become the classes; more values than this missing from
#: every mask (a stray 200 among 0 and 1) means the masks are not what the user thinks.
MAX_ABSENT_MASK_VALUES = 4


def listed(values: list[int], limit: int = 12) -> str:
    """`values` as "0, 1, 200", the first `limit` and "..." when there are more."""
    shown = ", ".join(str(value) for value in values[:limit])
    return shown + (", ..." if len(values) > limit else "")


def mask_values_problem(mask_values: list[int], ignore_index: int) -> str | None:
    """Why the values found in masks cannot stand for classes 0 ... max without codes (more
    than `MAX_ABSENT_MASK_VALUES` values below the largest are in no mask), or None."""
    values = sorted({value for value in mask_values if value != ignore_index})
    if not values:
        return None
    absent = values[-1] + 1 - len(values)
    if absent <= MAX_ABSENT_MASK_VALUES:
        return None
    return (
        f"the masks hold the values {listed(values)} and no codes were given: that would make "
        f"{values[-1] + 1} classes, {absent} of them in no mask; give the class names in "
        "codes.txt (one a line, line index = mask value) or with --codes / codes=[...]"
    )


class Targets:
    """How items' targets become tensors, are counted by `torso check` and are captioned.

    One subclass a kind of target. `masks` is True when an item's target is a mask file: read,
    checked, cached and transformed together with its image. `boxes` is True when an item's
    boxes are transformed with its image (`geometry(target, height, width)` gives them as a
    torchvision `BoundingBoxes`; `torso.data.boxes.BoxTargets`), and not cached.
    """

    masks: bool = False
    boxes: bool = False

    def outputs(
        self, source: Source, mask_values: list[int] | None, ignore_index: int
    ) -> tuple[list[str] | None, int]:
        """The class names (None when there are none) and the number of model outputs.

        `mask_values`: the values found in the masks by the check (None without a check).
        """
        classes = list(source.classes or [])
        return classes, len(classes)

    def encode(self, target: object, mask: torch.Tensor | None, num_classes: int) -> torch.Tensor:
        """The target tensor of one item, from its stored `target` (or its transformed `mask`)."""
        raise NotImplementedError(f"{type(self).__name__} must define encode()")

    def names(self, target: object, classes: list[str] | None) -> list[str]:
        """What `torso check` counts an item under: its class names, or "images"."""
        return ["images"]

    def caption(
        self, target: torch.Tensor, classes: list[str] | None, target_names: list[str] | None
    ) -> str:
        """The text `show_batch` writes under an image whose target tensor is `target`."""
        return ""


class ClassTargets(Targets):
    """One class index per item: int64 `()`; a batch's targets are `(N,)`."""

    def encode(self, target: object, mask: torch.Tensor | None, num_classes: int) -> torch.Tensor:
        return torch.tensor(target, dtype=torch.int64)

    def names(self, target: object, classes: list[str] | None) -> list[str]:
        return [classes[target]]

    def caption(
        self, target: torch.Tensor, classes: list[str] | None, target_names: list[str] | None
    ) -> str:
        return classes[int(target)]


class LabelTargets(Targets):
    """Any number of labels per item: float32 `(num_classes,)` of 0/1 (a batch: `(N, K)`)."""

    def encode(self, target: object, mask: torch.Tensor | None, num_classes: int) -> torch.Tensor:
        encoded = torch.zeros(num_classes, dtype=torch.float32)
        encoded[list(target)] = 1.0
        return encoded

    def names(self, target: object, classes: list[str] | None) -> list[str]:
        return [classes[i] for i in target] or ["(no label)"]

    def caption(
        self, target: torch.Tensor, classes: list[str] | None, target_names: list[str] | None
    ) -> str:
        names = [classes[i] for i in torch.nonzero(target).flatten().tolist()]
        return ", ".join(names) if names else "(none)"


class NumberTargets(Targets):
    """Numbers per item: float32 `(T,)` (a batch: `(N, T)`); no classes, one output a number."""

    def outputs(
        self, source: Source, mask_values: list[int] | None, ignore_index: int
    ) -> tuple[list[str] | None, int]:
        return None, len(source.target_names or [])

    def encode(self, target: object, mask: torch.Tensor | None, num_classes: int) -> torch.Tensor:
        return torch.tensor(target, dtype=torch.float32)

    def caption(
        self, target: torch.Tensor, classes: list[str] | None, target_names: list[str] | None
    ) -> str:
        names = target_names or [str(i) for i in range(len(target))]
        return ", ".join(f"{n}={v:.3g}" for n, v in zip(names, target.tolist(), strict=False))


class MaskTargets(Targets):
    """A class index per pixel: the item's mask, int64 `(size, size)` after the image's
    geometry (a batch: `(N, size, size)`); `ignore_index` marks void pixels."""

    masks = True

    def outputs(
        self, source: Source, mask_values: list[int] | None, ignore_index: int
    ) -> tuple[list[str] | None, int]:
        """The codes given by the user, else `"0" ... "max value"` of the values in the masks."""
        if source.codes_given:
            classes = list(source.classes)
        elif mask_values is None:
            raise TorsoError(
                "segmentation without codes: give codes=[...] or a codes.txt, or keep check=True "
                "so the masks are scanned for their values"
            )
        else:
            values = [value for value in mask_values if value != ignore_index]
            if not values:
                raise TorsoError(f"no mask values found in '{source.root}'")
            problem = mask_values_problem(values, ignore_index)
            if problem is not None:
                raise TorsoError(f"'{source.root}': {problem}")
            classes = [str(value) for value in range(max(values) + 1)]
        if len(classes) > 255:
            raise TorsoError(f"{len(classes)} codes: segmentation supports at most 255 classes")
        return classes, len(classes)

    def encode(self, target: object, mask: torch.Tensor | None, num_classes: int) -> torch.Tensor:
        return mask[0].long()


@dataclass(frozen=True)
class DataLayout:
    """Which data a task reads and what its samples look like.

    read: the reader (`torso.data.sources`), folder → `Source`.
    targets: the kind of target (`ClassTargets`, `LabelTargets`, `NumberTargets`, `MaskTargets`).
    pairs: samples are `((image_a, image_b), same)` pairs drawn from class-labelled items; the
        target is int64 1 (same class) or 0 (different), the classes `PAIR_CLASSES`.
    looks_like: `looks_like(folder)` is True when the folder has this layout's distinctive
        shape (`torso check --task auto`); None when nothing sets it apart.
    """

    read: Reader
    targets: Targets
    pairs: bool = False
    looks_like: Callable[[Path], bool] | None = None

    def outputs(
        self, source: Source, mask_values: list[int] | None, ignore_index: int
    ) -> tuple[list[str] | None, int]:
        """The class names of the model's outputs (or None) and their number."""
        if self.pairs:
            return list(PAIR_CLASSES), len(PAIR_CLASSES)
        return self.targets.outputs(source, mask_values, ignore_index)


class TaskWithData(Protocol):
    """What `torso.data` needs of a task (`torso.tasks.base.Task` has it)."""

    name: str

    def data_layout(self) -> DataLayout: ...


def task_layout(task: str | TaskWithData) -> tuple[str, DataLayout]:
    """The name and data layout of `task`: a registered task's name, or a task object."""
    if isinstance(task, str):
        task = get_task(task)
    layout = getattr(task, "data_layout", None)
    if layout is None:
        raise TorsoError(f"task {task!r} has no data_layout(): torso cannot tell how to read data")
    return str(getattr(task, "name", type(task).__name__)), layout()
