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
Printed (benchmarks/harness.py): set, recipe, final validation accuracy, and the wall and CPU
seconds of the run (the `torso train` subprocess included); with `--rounds` above 1 each cell is
the median (min-max) over the rounds, whose order rotates.

    pip install scikit-learn        # for the digits only
    python benchmarks/defaults.py                      # all recipes on both sets
    python benchmarks/defaults.py --sets digits --epochs 1
    python benchmarks/defaults.py --sets digits --recipes "scratch: old lr 1e-3" "scratch: lr 1e-2"
    python benchmarks/defaults.py --quick
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import harness

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
# --quick: one short run of a tiny model, to see that the script works.
QUICK = ["--backbone", "test_resnet", "--lr", "1e-2", "--no-flip", "--min-scale", "1"]


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


def small_copy(folder: Path, destination: Path, per_class: int) -> Path:
    """The first `per_class` images of each class folder under `folder` (any depth), copied
    to the same places under `destination` (--quick)."""
    for class_folder in sorted({path.parent for path in folder.rglob("*.png")}):
        target = destination / class_folder.relative_to(folder)
        target.mkdir(parents=True, exist_ok=True)
        for path in sorted(class_folder.glob("*.png"))[:per_class]:
            shutil.copy(path, target / path.name)
    return destination


def train(data: Path, out: Path, options: list[str], args) -> float:
    """The final validation accuracy of one `torso train` run into `out`."""
    command = [sys.executable, "-m", "torso", "train", str(data), "--size", str(args.size)]
    command += ["--batch-size", "64", "--epochs", str(args.epochs), "--threads", "1"]
    command += ["--workers", "0", "--quiet", "--out", str(out), *options]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    with open(out / "metrics.csv") as file:
        rows = list(csv.DictReader(file))
    return float(rows[-1]["accuracy"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_arguments(parser, rounds=1)
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
    args = parser.parse_args(argv)
    recipes = {name: ALL_RECIPES[name] for name in args.recipes}
    if args.quick:
        args.sets, args.epochs, args.size, args.rounds = ["fashion-mnist"], 1, 16, 1
        recipes = {"quick: scratch test_resnet, lr 1e-2": QUICK}
    work = Path(args.work or tempfile.mkdtemp(prefix="torso-defaults-"))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    accuracies: dict[str, list[float]] = {}
    contenders = []
    for name in args.sets:
        data = SETS[name](work / "data" / name)
        if args.quick:
            data = small_copy(data, work / "data" / f"{name}-small", 8)
        images = sum(1 for _ in data.rglob("*.png"))
        for recipe, options in recipes.items():
            key = f"{name}: {recipe}"
            accuracies[key] = []

            def block(key=key, data=data, options=options, images=images) -> int:
                run = len(accuracies[key])
                out = work / "runs" / f"{key.replace(' ', '').replace(':', '-')}-{run}"
                accuracies[key].append(train(data, out, options, args))
                return images * args.epochs  # counted per epoch, the same for every recipe

            contenders.append(harness.Contender(key, block))
    title = f"Default recipes: `torso train`, {args.size} px, batch 64, {args.epochs} epochs"
    head = harness.header(title, threads_and_workers="1 / 0 in each run", rounds=args.rounds)
    print(head)
    measured = harness.measure(contenders, args.rounds, warmup=0)
    rows = []
    for contender in contenders:
        timings = measured.timings[contender.name]
        set_name, recipe = contender.name.split(": ", 1)
        accuracy = harness.summarize(accuracies[contender.name])
        wall = harness.summarize([t.wall for t in timings])
        cpu = harness.summarize([t.cpu for t in timings])
        rows.append([set_name, recipe, accuracy.text(4, ""), wall.text(0, ""), cpu.text(0, "")])
    columns = ["set", "recipe", "accuracy", "wall s", "CPU s"]
    table = harness.markdown_table(columns, rows)
    harness.publish(args, "\n\n".join([head, table, harness.footer()]))


if __name__ == "__main__":
    main()
