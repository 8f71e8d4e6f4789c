"""Images per second of torso's embedding path next to a plain timm loop, same model and batch.

Two comparisons, both with `--backbone` (random weights, the same ones in both), `--size` px
images and batches of `--batch-size`, average pooling:

* model only: batches of [0, 1] images already in memory. torso's `Embedder` (body: normalise +
  timm `forward_features`; then mean pooling) against normalisation + timm's `forward_features`
  + mean on the same batches.
* files to vectors: `--images` generated JPEGs. `torso.tools.embed.embed_files` (a DataLoader
  reading
  and resizing images in worker processes, rows streamed into a memory-mapped .npy) against a
  plain loop that opens each file with PIL, resizes it, stacks a batch, normalises it and runs
  `forward_features` + mean, collecting the vectors in a list.

Target: torso at least 1.0x the plain loop in both. The two paths' vectors are compared too.

    .venv/bin/python benchmarks/embed_speed.py                  # CPU: resnet18, 128 px, 256 images
    .venv/bin/python benchmarks/embed_speed.py --device cuda --size 224 --images 2048
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table

from torso.tools.embed import embed_files, list_images, load_embedder


def generate(folder: Path, count: int, width: int = 320, height: int = 240) -> None:
    """`count` JPEGs of smooth random colour fields with a few blocks."""
    generator = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        path = folder / f"{index:05d}.jpg"
        if path.exists():
            continue
        coarse = (generator.random((6, 8, 3)) * 255).astype(np.uint8)
        image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
        pixels = np.asarray(image).astype(np.int16)
        for _ in range(3):
            top, left = generator.integers(0, height - 40), generator.integers(0, width - 40)
            pixels[top : top + 40, left : left + 40] = generator.integers(0, 256, 3)
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=90)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_rate(run: Callable[[], int], repeats: int, device: torch.device) -> float:
    """Images per second of the fastest of `repeats` runs (after one untimed warm-up run)."""
    run()
    rates = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        count = run()
        synchronize(device)
        rates.append(count / (time.perf_counter() - start))
    return max(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batches", type=int, default=8, help="model only: batches per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None, help="torso's reader processes")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data", help="folder for the generated JPEGs (default: a temporary one)")
    args = parser.parse_args()
    device = torch.device(args.device)

    embedder, identity = load_embedder(args.backbone, size=args.size)
    embedder = embedder.to(device)
    plain = timm.create_model(args.backbone, pretrained=False, num_classes=0, global_pool="")
    plain.load_state_dict(embedder.body.model.state_dict())
    plain = plain.eval().to(device)
    mean = torch.tensor(embedder.body.stats[0], device=device).view(1, -1, 1, 1)
    std = torch.tensor(embedder.body.stats[1], device=device).view(1, -1, 1, 1)

    # -- model only ---------------------------------------------------------------------------
    generator = torch.Generator().manual_seed(0)
    batches = [
        torch.rand(args.batch_size, 3, args.size, args.size, generator=generator).to(device)
        for _ in range(args.batches)
    ]

    @torch.inference_mode()
    def torso_model() -> int:
        for batch in batches:
            embedder(batch)
        return args.batch_size * len(batches)

    @torch.inference_mode()
    def timm_model() -> int:
        for batch in batches:
            plain.forward_features((batch - mean) / std).mean(dim=(2, 3))
        return args.batch_size * len(batches)

    with torch.inference_mode():
        reference = plain.forward_features((batches[0] - mean) / std).mean(dim=(2, 3))
        difference = embedder(batches[0]) - reference
        model_difference = float(difference.abs().max())

    # -- files to vectors ---------------------------------------------------------------------
    with tempfile.TemporaryDirectory() as temporary:
        data = Path(args.data) if args.data else Path(temporary) / "images"
        generate(data, args.images)
        files, root = list_images(data)
        files = files[: args.images]
        out = Path(temporary) / "embeddings.npy"

        def torso_files() -> int:
            result = embed_files(
                embedder,
                identity,
                files,
                out,
                root=root,
                batch_size=args.batch_size,
                num_workers=args.workers,
                device=device,
            )
            return result.count

        collected: list[np.ndarray] = []

        @torch.inference_mode()
        def timm_files() -> int:
            collected.clear()
            for start in range(0, len(files), args.batch_size):
                images = []
                for path in files[start : start + args.batch_size]:
                    with Image.open(path) as image:
                        image = image.convert("RGB").resize((args.size, args.size))
                        images.append(torch.from_numpy(np.asarray(image).copy()))
                batch = torch.stack(images).permute(0, 3, 1, 2).to(device).float() / 255
                vectors = plain.forward_features((batch - mean) / std).mean(dim=(2, 3))
                collected.append(vectors.cpu().numpy())
            return len(files)

        rows = [
            ("model only", best_rate(torso_model, args.repeats, device),
             best_rate(timm_model, args.repeats, device)),
            ("files to vectors", best_rate(torso_files, args.repeats, device),
             best_rate(timm_files, args.repeats, device)),
        ]  # fmt: skip
        torso_vectors = np.load(out)
        plain_vectors = np.concatenate(collected)
        cosine = np.sum(torso_vectors * plain_vectors, axis=1) / (
            np.linalg.norm(torso_vectors, axis=1) * np.linalg.norm(plain_vectors, axis=1)
        )

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    table = Table(
        title=(
            f"embedding speed: {args.backbone}, {args.size} px, batch {args.batch_size}, "
            f"{device_name} ({torch.get_num_threads()} threads)"
        )
    )
    for column in ("path", "torso img/s", "plain timm img/s", "torso / plain"):
        table.add_column(column, justify="left" if column == "path" else "right")
    for name, torso_rate, timm_rate in rows:
        ratio = f"{torso_rate / timm_rate:.2f}x"
        table.add_row(name, f"{torso_rate:.1f}", f"{timm_rate:.1f}", ratio)
    console = Console()
    console.print(table)
    console.print(
        f"model only: largest difference between the two paths' vectors {model_difference:.2e}; "
        f"files: cosine of torso's and the plain loop's vectors min {cosine.min():.4f} "
        "(the plain loop resizes with PIL, torso with torchvision's antialiased resize)"
    )


if __name__ == "__main__":
    main()
