"""Pieces the benchmarks share: generated JPEGs, and training blocks for torso's Learner, a plain
PyTorch loop and fastai's Learner that each return the images they trained (see harness.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from torso.train.callbacks import Callback


def write_jpegs(
    folder: Path, count: int, width: int, height: int, classes: int = 4, flat: bool = False
) -> list[Path]:
    """`count` JPEGs of smooth random colour fields with a few blocks, seeded: in `classes`
    class folders (`class<k>/<n>.jpg`), or all in `folder` when `flat`. Existing files stay."""
    generator = np.random.default_rng(0)
    paths = []
    for index in range(count):
        name = f"{index:05d}.jpg"
        path = folder / name if flat else folder / f"class{index % classes}" / name
        paths.append(path)
        coarse = (generator.random((6, 8, 3)) * 255).astype(np.uint8)
        boxes = [
            (generator.integers(0, height - height // 5), generator.integers(0, width - width // 5))
            for _ in range(3)
        ]
        colours = [generator.integers(0, 256, 3) for _ in range(3)]
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
        pixels = np.asarray(image).copy()
        for (top, left), colour in zip(boxes, colours, strict=True):
            pixels[top : top + height // 5, left : left + width // 5] = colour
        Image.fromarray(pixels).save(path, quality=90)
    return paths


def count_targets(y: Any) -> int:
    """Images in a batch's targets (a tensor, or a list of per-image targets)."""
    return len(y) if not isinstance(y, torch.Tensor) else int(y.shape[0])


class ImageCounter(Callback):
    """Counts the images of the training batches a torso Learner ran."""

    def __init__(self) -> None:
        self.images = 0

    def after_batch(self, learner) -> None:
        self.images += count_targets(learner.y)


def torso_block(learner, counter: ImageCounter, lr: float = 1e-3) -> Callable[[], int]:
    """One block: `learner.fit(1, lr)` (one pass over its training loader; the Learner should
    have no validation data); returns the images trained."""

    def block() -> int:
        before = counter.images
        learner.fit(1, lr)
        return counter.images - before

    return block


def adamw(model: nn.Module, lr: float = 1e-3) -> torch.optim.Optimizer:
    """The optimiser of every plain loop: AdamW with torso's betas, eps and weight decay."""
    return torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), eps=1e-5)


def plain_block(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable,
    loss: Callable[[Any, Any], torch.Tensor],
    channels_last: bool = False,
) -> Callable[[], int]:
    """One block of a hand-written loop: a pass over `batches` (an iterable re-iterated each
    block), forward, loss, backward, step; returns the images trained."""

    def block() -> int:
        model.train()
        images = 0
        for x, y in batches:
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            loss(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            images += count_targets(y)
        return images

    return block


def fastai_block(learner) -> Callable[[], int]:
    """One block of fastai's own loop: `learner.fit(1)` with validation skipped; returns the
    images trained (fastai's training loader drops its last partial batch)."""
    import fastai.callback.progress  # noqa: F401  (adds Learner.no_bar)
    from fastai.callback.core import Callback as FastaiCallback
    from fastai.callback.core import CancelValidException

    class CountAndSkipValidation(FastaiCallback):
        order = 99

        def before_fit(self) -> None:
            self.images = 0

        def after_batch(self) -> None:
            if self.training:
                self.images += count_targets(self.yb[0])

        def before_validate(self) -> None:
            raise CancelValidException()

    counter = CountAndSkipValidation()
    learner.add_cb(counter)

    def block() -> int:
        with learner.no_bar(), learner.no_logging():
            learner.fit(1)
        return counter.images

    return block


def parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
