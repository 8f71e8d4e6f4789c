"""Epoch time of the training loader with and without the presize cache.

Writes `--images` JPEGs (500x375, smooth random scenes), builds `load_data(..., size=128)` with
`cache=True` and with `cache=False` (same files, workers, batch size, augmentation), and times
epochs of iterating each training loader (no model: the input pipeline alone), interleaved
(benchmarks/harness.py). The untimed first epoch fills the cache; the timed ones after it read
presized uint8 tensors and only augment. CPU time counts the loader workers too. Target: epochs
after the first >= 2x faster with the cache.

    python benchmarks/presize_cache.py                  # 300 images, 2 workers, 5 rounds
    python benchmarks/presize_cache.py --images 2000 --workers 0
    python benchmarks/presize_cache.py --quick

If the comparison were unfair the ratio would show it: timing the cache-filling epoch would pull
it towards 1x; different worker counts would move it by up to the worker count.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import harness
from contenders import write_jpegs

from torso.data import load_data


def epoch_block(loader):
    def block() -> int:
        return sum(len(targets) for _, targets in loader)

    return block


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_arguments(parser, rounds=5)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="loader workers, both (2)")
    parser.add_argument("--data", type=Path, default=None, help="where to write the JPEGs")
    args = parser.parse_args(argv)
    width, height = 500, 375
    if args.quick:
        args.images, args.size, args.batch_size, args.workers = 16, 32, 4, 0
        args.rounds, width, height = min(args.rounds, 2), 64, 48
    harness.start(args)
    with tempfile.TemporaryDirectory(dir=args.data) as temporary:
        folder = Path(temporary) / "images"
        write_jpegs(folder, args.images, width, height)
        loaders, sizes = {}, {}
        for cache in (True, False):
            dls = load_data(
                folder,
                size=args.size,
                batch_size=args.batch_size,
                num_workers=args.workers,
                cache=cache,
                seed=0,
            )
            name = "with cache" if cache else "without cache"
            loaders[name], sizes[name] = dls.train, dls.cache_bytes
        contenders = [
            harness.Contender(name, epoch_block(loader), workers=loader.num_workers)
            for name, loader in loaders.items()
        ]
        title = (
            f"Presize cache: training-loader epochs, {args.images} JPEGs {width}x{height}, "
            f"size {args.size}, batch {args.batch_size}"
        )
        head = harness.header(
            title, contenders, cache_size=f"{sizes['with cache'] / 2**20:.1f} MiB"
        )
        print(head)
        result = harness.measure(contenders, args.rounds, warmup=args.warmup)
    table = harness.speed_table(result, "with cache", {"without cache": 2.0})
    harness.publish(args, "\n\n".join([head, table, harness.footer()]))


if __name__ == "__main__":
    main()
