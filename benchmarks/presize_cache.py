"""Epoch time of the training loader with and without the presize cache.

Generates `--images` JPEGs (default 2,000 at 500x375, smooth random scenes) in `--data`, then for
each setting builds `load_data(..., size=128)` and times a few epochs of iterating the training
loader (no model: this is the input pipeline alone). With the cache, the first epoch decodes and
fills it; later epochs only augment from uint8 tensors. Target: epochs after the first at least
2x faster with the cache.

    .venv/bin/python benchmarks/presize_cache.py            # 2,000 images, 3 epochs each
    .venv/bin/python benchmarks/presize_cache.py --images 300 --epochs 2   # a quick look
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from torso.data import load_data


def generate(folder: Path, count: int, width: int, height: int, classes: int = 4) -> None:
    """`count` JPEGs of smooth random colour fields with a few shapes, in `classes` folders."""
    generator = np.random.default_rng(0)
    for index in range(count):
        path = folder / f"class{index % classes}" / f"{index:05d}.jpg"
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        coarse = (generator.random((6, 8, 3)) * 255).astype(np.uint8)
        image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
        pixels = np.asarray(image).astype(np.int16)
        pixels += generator.integers(-12, 13, pixels.shape, dtype=np.int16)
        for _ in range(3):
            top, left = generator.integers(0, height - 40), generator.integers(0, width - 40)
            pixels[top : top + 40, left : left + 40] = generator.integers(0, 256, 3)
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=90)


def time_epochs(data: Path, cache: bool, size: int, epochs: int, batch_size: int, workers):
    start = time.perf_counter()
    dls = load_data(
        data, size=size, batch_size=batch_size, num_workers=workers, cache=cache, seed=0
    )
    setup = time.perf_counter() - start
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        count = sum(len(targets) for _, targets in dls.train)
        times.append(time.perf_counter() - start)
    return {
        "cache": cache,
        "setup_s": round(setup, 2),
        "epoch_s": [round(t, 2) for t in times],
        "images_per_epoch": count,
        "workers": dls.train.num_workers,
        "cache_mib": round(dls.cache_bytes / 2**20, 1),
        "note": dls.cache_note,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None, help="default: the cores")
    parser.add_argument("--data", type=Path, default=None, help="where to put the JPEGs")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args()
    data = args.data or Path(tempfile.gettempdir()) / f"torso-bench-{args.images}-{args.width}"
    start = time.perf_counter()
    generate(data, args.images, args.width, args.height)
    print(
        f"{args.images} JPEGs {args.width}x{args.height} in {data} "
        f"({time.perf_counter() - start:.1f} s to generate)"
    )
    results = []
    for cache in (False, True):
        result = time_epochs(data, cache, args.size, args.epochs, args.batch_size, args.workers)
        results.append(result)
        print(json.dumps(result))
    plain, cached = results
    later_plain = sum(plain["epoch_s"][1:]) / max(1, len(plain["epoch_s"]) - 1)
    later_cached = sum(cached["epoch_s"][1:]) / max(1, len(cached["epoch_s"]) - 1)
    speedup = later_plain / later_cached if later_cached else float("inf")
    print(
        f"epochs after the first: {later_plain:.2f} s without cache, {later_cached:.2f} s with "
        f"cache: {speedup:.2f}x faster (target 2x)"
    )
    if args.json:
        args.json.write_text(json.dumps({"results": results, "speedup": speedup}, indent=2))


if __name__ == "__main__":
    main()
