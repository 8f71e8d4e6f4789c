"""Start-up time of torso: `import torso`, `torso --help`, `torso train --help`,
`torso predict --help`, and `torso predict` of a run on a few images, with the share of that
prediction's time spent importing modules and the share spent in the model.

Every case runs in a fresh interpreter (a subprocess), `--rounds` times, the cases interleaved
(round 1: every case, round 2: every case, ...) so that a busy spell of the machine falls on
all of them alike; the table gives each case's median and min–max wall time, next to the time
of an interpreter that does nothing (`python -c pass`).

`torso predict` is run twice a round: as is (its wall time) and once more under
`python -X importtime` with `Predictor`'s forward pass timed, which gives the seconds spent in
imports (the sum of the top-level imports' cumulative times; -X importtime itself adds a
little) and in the model. The run is a classification run of `--backbone` with random
weights at `--size` px, and the images are `--images` JPEGs of 320x240, written once into a
temporary folder.

    .venv/bin/python benchmarks/startup.py                     # 5 rounds, 10 images
    .venv/bin/python benchmarks/startup.py --rounds 9 --images 32 --backbone resnet50
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: Runs in the predicting subprocess: times `torso predict` from the start of the interpreter's
#: work and the seconds spent inside the model's forward passes, and prints both as JSON.
PREDICT_PROBE = """
import json, sys, time
started = time.perf_counter()
import torch
from torso.predictor import Predictor
inside = [0.0]
forward = Predictor._call
def timed(self, x):
    begun = time.perf_counter()
    try:
        return forward(self, x)
    finally:
        inside[0] += time.perf_counter() - begun
Predictor._call = timed
from torso.cli import main
code = main(sys.argv[1:])
print("PROBE " + json.dumps({
    "seconds": time.perf_counter() - started, "model": inside[0], "code": code,
    "threads": torch.get_num_threads(),
}), file=sys.stderr)
"""


def make_run(folder: Path, backbone: str, size: int, count: int) -> tuple[Path, Path]:
    """A classification run of `backbone` (random weights) and `count` JPEGs to predict."""
    import numpy as np
    import torch
    from PIL import Image

    from torso.checkpoint import save_model
    from torso.config import RunConfig
    from torso.tasks import get_task

    run, images = folder / "run", folder / "images"
    task = get_task("classify")
    config = RunConfig("classify", backbone, 3, size, classes=["a", "b", "c"])
    torch.manual_seed(0)
    save_model(task.build_model(config).eval(), config, run)
    images.mkdir()
    generator = np.random.default_rng(0)
    for index in range(count):
        pixels = generator.integers(0, 256, (240, 320, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"{index:03d}.jpg", quality=90)
    return run, images


def timed(command: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{result.stderr[-2000:]}")
    return seconds, result


def import_seconds(importtime: str) -> float:
    """The seconds of the top-level imports in `python -X importtime`'s report (nested ones are
    inside their parents' cumulative times)."""
    total = 0
    for line in importtime.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line[len("import time:") :].split("|")
        if not name[1:].startswith(" "):  # depth 0: one space after the bar
            total += int(cumulative)
    return total / 1e6


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):7.3f}  {min(values):6.3f}–{max(values):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="repetitions of every case (5)")
    parser.add_argument("--images", type=int, default=10, help="images to predict (10)")
    parser.add_argument("--backbone", default="resnet18", help="the run's backbone (resnet18)")
    parser.add_argument("--size", type=int, default=224, help="the run's image size (224)")
    args = parser.parse_args()

    python = sys.executable
    torso = [python, "-m", "torso"]
    with tempfile.TemporaryDirectory() as temporary:
        run, images = make_run(Path(temporary), args.backbone, args.size, args.images)
        cases = {
            "python -c pass": [python, "-c", "pass"],
            "import torso": [python, "-c", "import torso"],
            "torso --help": [*torso, "--help"],
            "torso train --help": [*torso, "train", "--help"],
            "torso predict --help": [*torso, "predict", "--help"],
            f"torso predict ({args.images} images)": [*torso, "predict", str(run), str(images)],
        }
        probe = [python, "-X", "importtime", "-c", PREDICT_PROBE, "predict", str(run), str(images)]
        wall: dict[str, list[float]] = {name: [] for name in cases}
        probed: list[dict[str, float]] = []
        for _ in range(args.rounds):
            for name, command in cases.items():
                wall[name].append(timed(command)[0])
            _, result = timed(probe)
            line = [x for x in result.stderr.splitlines() if x.startswith("PROBE ")][-1]
            found = json.loads(line[len("PROBE ") :])
            found["imports"] = import_seconds(result.stderr)
            probed.append(found)

    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, torch threads in predict: "
        f"{probed[0]['threads']}; {args.rounds} rounds, interleaved; "
        f"run: {args.backbone} at {args.size} px"
    )
    print(f"\n{'case':<30} {'median s':>8}  min–max s")
    for name, values in wall.items():
        print(f"{name:<30} {spread(values)}")
    shares = {
        "imports": [p["imports"] / p["seconds"] for p in probed],
        "model": [p["model"] / p["seconds"] for p in probed],
    }
    print(f"\ntorso predict under -X importtime ({args.images} images), seconds and share:")
    for key in ("seconds", "imports", "model"):
        print(f"  {key:<8} {spread([p[key] for p in probed])}", end="")
        if key in shares:
            print(f"   share {statistics.median(shares[key]):6.1%}", end="")
        print()


if __name__ == "__main__":
    main()
