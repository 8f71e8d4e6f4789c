"""Start-up time of torso: `import torso`, `torso --help`, `torso train --help`,
`torso predict --help`, and `torso predict` of a run on a few images, with the share of that
prediction's time spent importing modules and the share spent in the model.

Every case runs in a fresh interpreter (a subprocess), `--rounds` times, the cases interleaved
(round 1: every case, round 2: every case, ...) so that a busy spell of the machine falls on
all of them alike; the table gives each case's median and min–max wall time, next to the time
of an interpreter that does nothing (`python -c pass`). The rounds are benchmarks/harness.py's
(the order rotating each round, an untimed warm-up round first).

`torso predict` is run twice a round: as is (its wall time) and once more under
`python -X importtime` with `Predictor`'s forward pass timed, which gives the seconds spent in
imports (the sum of the top-level imports' cumulative times; -X importtime itself adds a
little) and in the model. The run is a classification run of `--backbone` with random
weights at `--size` px, and the images are `--images` JPEGs of 320x240, written once into a
temporary folder.

    .venv/bin/python benchmarks/startup.py                     # 5 rounds, 10 images
    .venv/bin/python benchmarks/startup.py --rounds 9 --images 32 --backbone resnet50
    .venv/bin/python benchmarks/startup.py --quick
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

import harness

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


def spread(values: list[float], digits: int = 3) -> str:
    return harness.summarize(values).text(digits, "")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    harness.add_arguments(parser, rounds=5)
    parser.add_argument("--images", type=int, default=10, help="images to predict (10)")
    parser.add_argument("--backbone", default="resnet18", help="the run's backbone (resnet18)")
    parser.add_argument("--size", type=int, default=224, help="the run's image size (224)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.warmup, args.images = 1, 0, 2
        args.backbone, args.size = "test_resnet", 32

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
        probed: list[dict[str, float]] = []

        def case(command: list[str]):
            def block() -> int:
                timed(command)
                return 1

            return block

        def probe_block() -> int:
            _, result = timed(probe)
            line = [x for x in result.stderr.splitlines() if x.startswith("PROBE ")][-1]
            found = json.loads(line[len("PROBE ") :])
            found["imports"] = import_seconds(result.stderr)
            probed.append(found)
            return 1

        contenders = [harness.Contender(name, case(command)) for name, command in cases.items()]
        contenders.append(harness.Contender("torso predict, -X importtime", probe_block))
        title = (
            f"Start-up: each case in a fresh interpreter; run: {args.backbone} at {args.size} px"
        )
        head = harness.header(
            title,
            OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "unset"),
            rounds=args.rounds,
        )
        print(head)
        measured = harness.measure(contenders, args.rounds, warmup=args.warmup)
    timed_probes = probed[-args.rounds :]  # the warm-up's probe is not counted
    rows = [[name, spread([t.wall for t in measured.timings[name]])] for name in measured.names]
    table = harness.markdown_table(["case", "wall s, median (min-max)"], rows)
    shares = [
        [
            key,
            spread([p[key] for p in timed_probes]),
            f"{statistics.median(p[key] / p['seconds'] for p in timed_probes):.1%}"
            if key != "seconds"
            else "-",
        ]
        for key in ("seconds", "imports", "model")
    ]
    probe_table = harness.markdown_table(
        [f"torso predict under -X importtime ({args.images} images)", "s", "share"], shares
    )
    threads = f"- torch threads in predict: {timed_probes[0]['threads']}"
    harness.publish(args, "\n\n".join([head, table, probe_table, threads, harness.footer()]))


if __name__ == "__main__":
    main()
