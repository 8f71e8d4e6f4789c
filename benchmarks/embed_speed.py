"""Images per second of torso's embedding path next to a plain timm loop, same model and batch.

Two comparisons, both with `--backbone` (random weights, the same ones everywhere), `--size` px
and batches of `--batch-size`, average pooling, blocks interleaved (benchmarks/harness.py):

* model only: the same in-memory batches. torso's `Embedder` (normalise + timm
  `forward_features` + mean pooling, in the memory format torso's embedding path measures as
  faster on the first batch) against the same steps written by hand, in the default layout and
  with channels_last.
* files to vectors: the same `--images` generated JPEGs. `torso.tools.embed.embed_files` (a
  DataLoader reading and resizing images, rows streamed into a .npy) against a plain loop over a
  DataLoader that opens each file with PIL and resizes it, both with `--workers` loader workers
  (the same number: default 0), collecting the vectors in a list.

Target: torso >= 1.0x the best plain loop in both. The two paths' vectors are compared too.

    python benchmarks/embed_speed.py                  # resnet18, 128 px, 128 images
    python benchmarks/embed_speed.py --workers 2 --images 512
    python benchmarks/embed_speed.py --quick

If the comparison were unfair the ratios would show it: giving only one side loader workers
would move "files to vectors" by about the share of time spent decoding (2x or more here).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import harness
import numpy as np
import timm
import torch
from contenders import write_jpegs
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from torso.tools.embed import embed_files, list_images, load_embedder
from torso.train.placement import probe_inference_channels_last


class Files(Dataset):
    def __init__(self, files: list[Path], size: int):
        self.files, self.size = files, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index):
        with Image.open(self.files[index]) as image:
            image = image.convert("RGB").resize((self.size, self.size))
            return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    harness.add_arguments(parser, rounds=5)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--batches", type=int, default=3, help="model only: batches a block")
    parser.add_argument("--workers", type=int, default=0, help="loader workers, both sides (0)")
    args = parser.parse_args(argv)
    if args.quick:
        args.backbone, args.size, args.batch_size = "test_resnet", 32, 4
        args.images, args.batches, args.rounds = 8, 2, min(args.rounds, 2)
    harness.start(args)

    embedder, identity = load_embedder(args.backbone, size=args.size)
    plain = timm.create_model(args.backbone, pretrained=False, num_classes=0, global_pool="")
    plain.load_state_dict(embedder.body.model.state_dict())
    plain.eval()
    plain_cl = timm.create_model(args.backbone, pretrained=False, num_classes=0, global_pool="")
    plain_cl.load_state_dict(embedder.body.model.state_dict())
    plain_cl = plain_cl.eval().to(memory_format=torch.channels_last)
    mean = torch.tensor(embedder.body.stats[0]).view(1, -1, 1, 1)
    std = torch.tensor(embedder.body.stats[1]).view(1, -1, 1, 1)
    generator = torch.Generator().manual_seed(0)
    batches = [
        torch.rand(args.batch_size, 3, args.size, args.size, generator=generator)
        for _ in range(args.batches)
    ]

    def model_block(forward):
        @torch.inference_mode()
        def block() -> int:
            for batch in batches:
                forward(batch)
            return args.batch_size * len(batches)

        return block

    def by_hand(model, channels_last):
        def forward(batch):
            x = (batch - mean) / std
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            return model.forward_features(x).mean(dim=(2, 3))

        return forward

    # torso's embedding path decides the memory format on its first batch (see embed_files)
    chosen = probe_inference_channels_last(embedder, torch.device("cpu"), batches[0])

    def torso_forward(batch):
        if chosen:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return embedder(batch)

    contenders = [
        harness.Contender("torso Embedder", model_block(torso_forward)),
        harness.Contender("plain timm", model_block(by_hand(plain, False))),
        harness.Contender("plain timm, channels_last", model_block(by_hand(plain_cl, True))),
    ]
    contenders = [c for c in contenders if harness.wanted(args, c.name)]
    with torch.inference_mode():
        reference = by_hand(plain, False)(batches[0])
        model_difference = float((embedder(batches[0]) - reference).abs().max())
    title = f"Embedding speed: {args.backbone}, {args.size} px, batch {args.batch_size}"
    layout = "channels_last" if chosen else "default"
    head = harness.header(title, contenders, rounds=args.rounds, torso_memory_format=layout)
    print(head)
    model_only = harness.measure(contenders, args.rounds, warmup=args.warmup)

    with tempfile.TemporaryDirectory() as temporary:
        data = Path(temporary) / "images"
        write_jpegs(data, args.images, 320, 240, flat=True)
        files, root = list_images(data)
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
                device="cpu",
            )
            return result.count

        collected: list[np.ndarray] = []

        @torch.inference_mode()
        def plain_files() -> int:
            collected.clear()
            loader = DataLoader(
                Files(files, args.size), batch_size=args.batch_size, num_workers=args.workers
            )
            for images in loader:
                vectors = by_hand(plain, False)(images.float() / 255)
                collected.append(vectors.numpy())
            return sum(len(v) for v in collected)

        file_contenders = [
            harness.Contender("torso embed_files", torso_files, workers=args.workers),
            harness.Contender("plain loop", plain_files, workers=args.workers),
        ]
        file_contenders = [c for c in file_contenders if harness.wanted(args, c.name)]
        print("files to vectors:")
        from_files = harness.measure(file_contenders, args.rounds, warmup=args.warmup)
        cosine = None
        if out.exists() and collected:
            torso_vectors, plain_vectors = np.load(out), np.concatenate(collected)
            cosine = np.sum(torso_vectors * plain_vectors, axis=1) / (
                np.linalg.norm(torso_vectors, axis=1) * np.linalg.norm(plain_vectors, axis=1)
            )

    notes = [f"- model only: largest difference between the vectors {model_difference:.2e}"]
    if cosine is not None:
        notes.append(
            f"- files: cosine of torso's and the plain loop's vectors, min {cosine.min():.4f} "
            "(PIL resize against torso's antialiased torchvision resize)"
        )
    targets = {"plain timm": 1.0, "plain timm, channels_last": 1.0, "plain loop": 1.0}
    parts = [head, "Model only:"]
    if contenders:
        parts.append(harness.speed_table(model_only, contenders[0].name, targets))
    parts.append(f"Files to vectors ({args.images} JPEGs, 320x240):")
    if file_contenders:
        parts.append(harness.speed_table(from_files, file_contenders[0].name, targets))
    parts += ["\n".join(notes), harness.footer()]
    harness.publish(args, "\n\n".join(parts))


if __name__ == "__main__":
    main()
