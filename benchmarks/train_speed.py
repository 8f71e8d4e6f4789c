"""Training speed, images per second: torso vs a plain PyTorch loop vs fastai (when installed).

Same model (`torso.create_model(backbone, classes)`, random weights), same JPEGs, same image size,
batch size, loader workers and optimiser (AdamW) for every contender; only training batches are
timed (validation is left out). Two settings, as in issue 4:

(a) compute-bound: timm resnet18, 128 px, batch 32, from 160x160 JPEGs. Epochs after the first
    are timed (the first warms up and, for torso, fills the presize cache). The plain loop runs
    twice: as written naively, and with channels_last. Target: torso >= 1.0x the best plain loop
    and >= 1.15x fastai.
(b) input-bound: tf_efficientnet_lite0, 96 px, from 500x375 JPEGs, 3 epochs, the whole run timed
    from data set-up to the end, validation left out. Target: torso >= 1.5x fastai.

    .venv/bin/python benchmarks/train_speed.py                  # both settings
    .venv/bin/python benchmarks/train_speed.py --setting a --images 320 --epochs 3

Measured on the 2-core development machine (2026-11-27) while other test suites ran beside it
(load average 5-8), so absolute numbers are low and noisy:

* `--images 200 --threads 1 --workers 0` (one thread, decoding in the training process):
  (a) torso 21.7 img/s, plain loop 13.1, plain + channels_last 14.7, fastai 12.4 → torso 1.47x
  the best plain loop, 1.74x fastai. (b) torso 24.6, plain 17.9, plain + channels_last 22.7,
  fastai 16.8 → 1.08x and 1.47x.
* `--images 320` (2 threads, 2 workers): every contender 3-8 img/s and epoch times varying 2x
  within one contender: two threads on two busy cores mostly wait for each other.
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

import torso
from torso.data import load_data
from torso.data.checks import default_workers
from torso.tasks import get_task
from torso.train.callbacks import Callback
from torso.train.learner import Learner, set_seed

CLASSES = 4


@dataclass
class Setting:
    name: str
    backbone: str
    size: int
    batch_size: int
    width: int
    height: int
    epochs: int
    timed: str  # "after_first": epochs 2.. ; "whole": everything from data set-up on


SETTINGS = {
    "a": Setting("a compute-bound", "resnet18", 128, 32, 160, 160, 3, "after_first"),
    "b": Setting("b input-bound", "tf_efficientnet_lite0", 96, 32, 500, 375, 3, "whole"),
}


def generate(folder: Path, count: int, width: int, height: int) -> None:
    """`count` JPEGs (smooth colour fields with squares) in CLASSES class folders."""
    rng = np.random.default_rng(0)
    for index in range(count):
        path = folder / f"class{index % CLASSES}" / f"{index:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        coarse = Image.fromarray((rng.random((6, 8, 3)) * 255).astype(np.uint8))
        pixels = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC)).copy()
        for _ in range(3):
            top, left = rng.integers(0, height - height // 5), rng.integers(0, width - width // 5)
            pixels[top : top + height // 5, left : left + width // 5] = rng.integers(0, 256, 3)
        Image.fromarray(pixels).save(path, quality=90)


# -- torso -------------------------------------------------------------------------------------
class TrainTimer(Callback):
    """Seconds of each epoch's training batches (loader start-up included) and of validation."""

    def __init__(self):
        self.seconds: list[float] = []
        self.validation = 0.0
        self._start = self._trained = 0.0

    def on_epoch_start(self, learner):
        self._start = time.perf_counter()

    def on_batch_end(self, learner, loss):
        if learner.batch_index + 1 == learner.num_batches:
            self._trained = time.perf_counter()
            self.seconds.append(self._trained - self._start)

    def on_epoch_end(self, learner, row):
        self.validation += time.perf_counter() - self._trained


def run_torso(data: Path, setting: Setting, workers: int) -> tuple[list[float], int, float]:
    set_seed(0)
    start = time.perf_counter()
    dls = load_data(
        data,
        size=setting.size,
        batch_size=setting.batch_size,
        num_workers=workers,
        valid_pct=0.2,
        augment=False,
        seed=0,
    )
    task = get_task("classify")
    model = torso.create_model(setting.backbone, dls.num_outputs)
    timer = TrainTimer()
    learner = Learner(model, dls.train, dls.valid, task=task, callbacks=[timer])
    learner.fit_one_cycle(setting.epochs, 1e-3)
    whole = time.perf_counter() - start - timer.validation
    return timer.seconds, len(dls.train_items), whole


# -- a plain PyTorch loop ----------------------------------------------------------------------
class Folder(Dataset):
    """Class-folder JPEGs, decoded and resized on every access, as a first loop would do."""

    def __init__(self, paths: list[Path], classes: list[str], size: int):
        self.paths, self.classes, self.size = paths, classes, size

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        path = self.paths[index]
        image = (
            Image.open(path)
            .convert("RGB")
            .resize((self.size, self.size), Image.Resampling.BILINEAR)
        )
        pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255
        return pixels, self.classes.index(path.parent.name)


def run_plain(
    data: Path, setting: Setting, workers: int, train_paths: list[Path], channels_last: bool
) -> tuple[list[float], int, float]:
    set_seed(0)
    start = time.perf_counter()
    classes = sorted(p.name for p in data.iterdir() if p.is_dir())
    loader = DataLoader(
        Folder(train_paths, classes, setting.size),
        batch_size=setting.batch_size,
        shuffle=True,
        num_workers=workers,
        drop_last=False,
        persistent_workers=workers > 0,
    )
    model = torso.create_model(setting.backbone, len(classes))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    seconds = []
    for _ in range(setting.epochs):
        epoch_start = time.perf_counter()
        for images, targets in loader:
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            loss = torch.nn.functional.cross_entropy(model(images), targets)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - epoch_start)
    return seconds, len(train_paths), time.perf_counter() - start


# -- fastai --------------------------------------------------------------------------------------
def run_fastai(data: Path, setting: Setting, workers: int) -> tuple[list[float], int, float]:
    from fastai.vision.all import (
        Callback as FastaiCallback,
    )
    from fastai.vision.all import (
        ImageDataLoaders,
        Resize,
        ResizeMethod,
        vision_learner,
    )

    class Timer(FastaiCallback):
        order = 99

        def before_fit(self):
            self.seconds, self.validation = [], 0.0

        def before_train(self):
            self.start = time.perf_counter()

        def after_train(self):
            self.seconds.append(time.perf_counter() - self.start)

        def before_validate(self):
            self.start_validation = time.perf_counter()

        def after_validate(self):
            self.validation += time.perf_counter() - self.start_validation

    set_seed(0)
    start = time.perf_counter()
    dls = ImageDataLoaders.from_folder(
        data,
        valid_pct=0.2,
        seed=0,
        item_tfms=Resize(setting.size, method=ResizeMethod.Squish),
        bs=setting.batch_size,
        num_workers=workers,
    )
    timer = Timer()
    learner = vision_learner(dls, setting.backbone, pretrained=False, cbs=[timer])
    with learner.no_bar(), learner.no_logging():
        learner.fit_one_cycle(setting.epochs, 1e-3)
    whole = time.perf_counter() - start - timer.validation
    return timer.seconds, len(dls.train_ds), whole


# -- the table -----------------------------------------------------------------------------------
def images_per_second(seconds: list[float], images: int, whole: float, setting: Setting) -> float:
    if setting.timed == "after_first":
        later = seconds[1:] or seconds
        return images * len(later) / sum(later)
    return images * setting.epochs / whole


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", choices=["a", "b", "both"], default="both")
    parser.add_argument("--images", type=int, default=400, help="JPEGs to generate (400)")
    parser.add_argument("--epochs", type=int, default=None, help="override the setting's epochs")
    parser.add_argument(
        "--workers", type=int, default=None, help="loader workers (torso's default)"
    )
    parser.add_argument("--data", type=Path, default=None, help="where to put the JPEGs")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (all cores)")
    arguments = parser.parse_args()
    if arguments.threads:
        torch.set_num_threads(arguments.threads)
    has_fastai = importlib.util.find_spec("fastai") is not None
    workers = default_workers() if arguments.workers is None else arguments.workers
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {workers} loader "
        f"workers, fastai {'installed' if has_fastai else 'not installed'}"
    )
    for key in ["a", "b"] if arguments.setting == "both" else [arguments.setting]:
        setting = SETTINGS[key]
        if arguments.epochs:
            setting.epochs = arguments.epochs
        with tempfile.TemporaryDirectory(dir=arguments.data) as folder:
            data = Path(folder) / "images"
            generate(data, arguments.images, setting.width, setting.height)
            dls = load_data(
                data,
                size=setting.size,
                batch_size=setting.batch_size,
                num_workers=0,
                seed=0,
                cache=False,
                check=False,
            )
            train_paths = list(dls.train_items)
            results = {"torso": run_torso(data, setting, workers)}
            results["plain loop"] = run_plain(data, setting, workers, train_paths, False)
            results["plain loop, channels_last"] = run_plain(
                data, setting, workers, train_paths, True
            )
            if has_fastai:
                results["fastai vision_learner"] = run_fastai(data, setting, workers)
        speeds = {name: images_per_second(*result, setting) for name, result in results.items()}
        timed = "epochs 2.." if setting.timed == "after_first" else "set-up + all epochs"
        print(
            f"\n({setting.name}) {setting.backbone}, {setting.size} px, batch "
            f"{setting.batch_size}, {setting.width}x{setting.height} JPEGs, {setting.epochs} "
            f"epochs, {len(train_paths)} training images; timed: {timed}"
        )
        print(f"{'':28s} {'img/s':>8s} {'torso is':>10s}  training epochs (s)")
        for name, speed in speeds.items():
            ratio = speeds["torso"] / speed
            epochs = " ".join(f"{seconds:.1f}" for seconds in results[name][0])
            print(f"{name:28s} {speed:8.1f} {ratio:9.2f}x  {epochs}")


if __name__ == "__main__":
    main()
