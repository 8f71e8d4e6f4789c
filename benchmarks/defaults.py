"""Which default training recipe: the old one and a few candidates, on two real image sets.

The sets: the Fashion-MNIST subset embedded in torso (`torso.data.demo.write_fashion_mnist`:
3,000 training and 1,000 validation images, 28 px), and scikit-learn's digits (1,797 8x8
images shipped inside the `scikit-learn` package, written once as PNG class folders upscaled to
32 px; `torso train` holds out 20% of them, seed 0). Digits are the case where a mirrored image
is another (or no) digit.

Each recipe is one `torso train` subprocess with `--size`, `--epochs`, `--threads 1 --workers 0`.
The fine-tuning recipes (the default) start from the packaged pretrained `tf_efficientnet_lite0`
(`--pretrained`, as `torso demo` uses; one epoch with the body frozen) and differ only in `--lr`
and the augmentation switches; the `scratch:` ones train resnet18 from random weights.
Printed: set, recipe, final validation accuracy, wall time, threads/workers.

    pip install scikit-learn        # for the digits only
    python benchmarks/defaults.py                      # all recipes on both sets
    python benchmarks/defaults.py --sets digits --epochs 1
    python benchmarks/defaults.py --sets digits --recipes "scratch: old lr 1e-3" "scratch: lr 1e-2"
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FINE_TUNE = ["--pretrained", "--backbone", "tf_efficientnet_lite0"]
SCRATCH = ["--backbone", "resnet18"]
# name -> the `torso train` options that make the recipe
RECIPES = {
    "old: lr 2e-3, flip, crop 0.75": [*FINE_TUNE, "--lr", "2e-3"],
    "lr 1e-2, flip, crop 0.75": [*FINE_TUNE, "--lr", "1e-2"],
    "lr 1e-2, no flip, crop 0.75": [*FINE_TUNE, "--lr", "1e-2", "--no-flip"],
    "lr 1e-2, flip, no crop": [*FINE_TUNE, "--lr", "1e-2", "--min-scale", "1"],
    "lr 1e-2, no flip, no crop": [*FINE_TUNE, "--lr", "1e-2", "--no-flip", "--min-scale", "1"],
}
# Training from random weights (one-cycle): resnet18, about 4x slower than the above.
SCRATCH_RECIPES = {
    "scratch: old lr 1e-3": [*SCRATCH, "--lr", "1e-3", "--no-flip", "--min-scale", "1"],
    "scratch: lr 1e-2": [*SCRATCH, "--lr", "1e-2", "--no-flip", "--min-scale", "1"],
}
ALL_RECIPES = {**RECIPES, **SCRATCH_RECIPES}


def write_digits(folder: Path, size: int = 32) -> Path:
    """scikit-learn's digits as PNG class folders (`folder/<digit>/<n>.png`), `size` px."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    if folder.exists():
        return folder
    digits = load_digits()
    for index, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        pixels = (np.asarray(image) * (255 / 16)).clip(0, 255).astype("uint8")
        picture = Image.fromarray(pixels).resize((size, size), Image.BILINEAR)
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        picture.save(folder / str(label) / f"{index}.png")
    return folder


def write_fashion(folder: Path) -> Path:
    from torso.data.demo import write_fashion_mnist

    return write_fashion_mnist(folder)


SETS = {"fashion-mnist": write_fashion, "digits": write_digits}


def train(data: Path, out: Path, options: list[str], args) -> tuple[float, float]:
    """(final validation accuracy, wall seconds) of one `torso train` run."""
    command = [
        sys.executable,
        "-m",
        "torso",
        "train",
        str(data),
        "--size",
        str(args.size),
        "--batch-size",
        "64",
        "--epochs",
        str(args.epochs),
        "--threads",
        "1",
        "--workers",
        "0",
        "--quiet",
        "--out",
        str(out),
        *options,
    ]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    with open(out / "metrics.csv") as file:
        rows = list(csv.DictReader(file))
    return float(rows[-1]["accuracy"]), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", choices=list(SETS), default=list(SETS))
    parser.add_argument(
        "--recipes",
        nargs="+",
        choices=list(ALL_RECIPES),
        default=list(RECIPES),
        help="default: the fine-tuning ones",
    )
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--work", help="folder for the data and runs (default: a temporary one)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="torso-defaults-"))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    print(f"{'set':<14} {'recipe':<30} {'accuracy':>8} {'wall s':>7}  threads/workers")
    for name in args.sets:
        data = SETS[name](work / "data" / name)
        for recipe in args.recipes:
            out = work / "runs" / f"{name}-{recipe.replace(' ', '').replace(':', '')}"
            accuracy, seconds = train(data, out, ALL_RECIPES[recipe], args)
            print(f"{name:<14} {recipe:<30} {accuracy:>8.4f} {seconds:>7.0f}  1/0", flush=True)


if __name__ == "__main__":
    main()
