"""Training speed, images per second: torso's Learner vs a plain PyTorch loop vs fastai.

Every contender trains the same model (`torso.create_model(backbone, 4)`, random weights, every
parameter trained) with AdamW at a constant rate, cross-entropy, the same batch size, the same
threads and loader workers; validation is left out. Blocks run interleaved (benchmarks/harness.py)
and each counts the images it really trained. Two settings:

(a) compute-bound: resnet18, 128 px, batch 32. Every contender reads the same decoded tensors
    from memory (no JPEG decoding, no cache), a block is `--steps` batches. Contenders: torso's
    Learner, a plain loop, the plain loop with channels_last, fastai's `vision_learner` (fastai's
    own head on the same body). Targets: torso >= 1.0x the best plain loop, >= 1.15x fastai.
(b) input-bound: tf_efficientnet_lite0, 96 px, batch 32, from 500x375 JPEGs: every contender reads
    the same files with its own loader (torso: `load_data` with its presize cache; the plain
    loop: PIL open + resize per item; fastai: `DataBlock` with `Resize`). A block is one epoch;
    the untimed first epoch fills torso's cache, so the figure is for the epochs after it.
    Target: torso >= 1.5x fastai.

    python benchmarks/train_speed.py                      # both settings, the standard sizes
    python benchmarks/train_speed.py --setting a --rounds 9
    python benchmarks/train_speed.py --quick --contenders torso plain   # a smoke run

If the comparison were unfair the ratios would show it: a contender decoding JPEGs that another
reads from memory in (a) would lose 2x or more; crediting torso for images its loader drops in
(b) would add the dropped share (up to one batch an epoch) to its rate.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import harness
import numpy as np
import torch
from contenders import (
    ImageCounter,
    adamw,
    fastai_block,
    parameters,
    plain_block,
    torso_block,
    write_jpegs,
)
from PIL import Image
from torch.utils.data import DataLoader, Dataset, TensorDataset

import torso
from torso.data import load_data
from torso.tasks import get_task
from torso.train.learner import Learner, set_seed

CLASSES = 4
TARGETS_A = {"plain loop": 1.0, "plain loop, channels_last": 1.0, "fastai vision_learner": 1.15}
TARGETS_B = {"fastai vision_learner": 1.5}


def loss(pred, y):
    return torch.nn.functional.cross_entropy(pred, y)


def fastai_learner(dls, backbone: str):
    from fastai.losses import CrossEntropyLossFlat
    from fastai.vision.learner import vision_learner

    return vision_learner(
        dls,
        backbone,
        n_out=CLASSES,
        pretrained=False,
        normalize=False,
        loss_func=CrossEntropyLossFlat(),
    )


# -- (a) compute-bound: the same decoded tensors for everyone ---------------------------------
def plain_contenders(args, backbone: str, loader, loss, sizes: dict, workers: int = 0) -> list:
    """The hand-written loop in the default layout and with channels_last (those `--contenders`
    asks for), each on a fresh model seeded as torso's and a fresh `loader()`; their parameter
    counts go into `sizes`."""
    contenders = []
    for channels_last in (False, True):
        name = "plain loop, channels_last" if channels_last else "plain loop"
        if not harness.wanted(args, name if channels_last else "plain"):
            continue
        set_seed(0)
        model = torso.create_model(backbone, CLASSES)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        sizes[name] = parameters(model)
        block = plain_block(model, adamw(model), loader(), loss, channels_last)
        contenders.append(harness.Contender(name, block, workers=workers))
    return contenders


def setting_a(args) -> str:
    backbone, size, batch = ("test_resnet", 32, 4) if args.quick else ("resnet18", 128, 32)
    steps = 2 if args.quick else args.steps
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(steps * batch, 3, size, size, generator=generator)
    y = torch.arange(steps * batch) % CLASSES
    data = TensorDataset(x, y)

    def loader():
        return DataLoader(data, batch_size=batch, shuffle=False, num_workers=0)

    contenders, sizes = [], {}
    if harness.wanted(args, "torso"):
        set_seed(0)
        model = torso.create_model(backbone, CLASSES)
        counter = ImageCounter()
        learner = Learner(model, loader(), None, task=get_task("classify"), callbacks=[counter])
        sizes["torso"] = parameters(model)
        contenders.append(harness.Contender("torso", torso_block(learner, counter)))
    contenders += plain_contenders(args, backbone, loader, loss, sizes)
    if harness.wanted(args, "fastai") and harness.optional("fastai", "fastai vision_learner"):
        from fastai.data.core import DataLoaders
        from fastai.data.load import DataLoader as FastaiLoader

        samples = list(zip(x, y, strict=True))
        train = FastaiLoader(samples, bs=batch, shuffle=False, drop_last=False)
        valid = FastaiLoader(samples[:batch], bs=batch)
        set_seed(0)
        learner = fastai_learner(DataLoaders(train, valid), backbone)
        sizes["fastai vision_learner"] = parameters(learner.model)
        contenders.append(harness.Contender("fastai vision_learner", fastai_block(learner)))
    title = f"(a) compute-bound: {backbone}, {size} px, batch {batch}, {steps} steps a block"
    return run(args, title, contenders, sizes, TARGETS_A, data="the same decoded tensors")


# -- (b) input-bound: the same JPEG files for everyone ----------------------------------------
class Folder(Dataset):
    """JPEGs decoded and resized on every access, as a first hand-written loop does."""

    def __init__(self, paths: list[Path], classes: list[str], size: int):
        self.paths, self.classes, self.size = paths, classes, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index):
        path = self.paths[index]
        with Image.open(path) as image:
            image = image.convert("RGB").resize((self.size, self.size), Image.Resampling.BILINEAR)
            pixels = torch.from_numpy(np.asarray(image).copy())
        return pixels.permute(2, 0, 1).float() / 255, self.classes.index(path.parent.name)


def setting_b(args, folder: Path) -> str:
    backbone = "test_efficientnet" if args.quick else "tf_efficientnet_lite0"
    size, batch = (32, 4) if args.quick else (96, 32)
    count, width, height = (20, 64, 48) if args.quick else (args.images, 500, 375)
    write_jpegs(folder, count, width, height, CLASSES)
    workers = args.workers
    dls = load_data(folder, size=size, batch_size=batch, num_workers=workers, augment=False, seed=0)
    train_paths, valid_paths = list(dls.train_items), set(dls.valid_items)
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())

    contenders, sizes = [], {}
    if harness.wanted(args, "torso"):
        set_seed(0)
        model = torso.create_model(backbone, CLASSES)
        counter = ImageCounter()
        learner = Learner(model, dls.train, None, task=get_task("classify"), callbacks=[counter])
        sizes["torso"] = parameters(model)
        contender = harness.Contender("torso", torso_block(learner, counter), workers=workers)
        contenders.append(contender)

    def loader():
        dataset = Folder(train_paths, classes, size)
        return DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers)

    contenders += plain_contenders(args, backbone, loader, loss, sizes, workers)
    if harness.wanted(args, "fastai") and harness.optional("fastai", "fastai vision_learner"):
        from fastai.vision.all import (
            CategoryBlock,
            DataBlock,
            FuncSplitter,
            ImageBlock,
            Resize,
            ResizeMethod,
            parent_label,
        )

        block_spec = DataBlock(
            blocks=(ImageBlock, CategoryBlock),
            get_items=lambda _: sorted(train_paths) + sorted(valid_paths),
            splitter=FuncSplitter(lambda path: path in valid_paths),
            get_y=parent_label,
            item_tfms=Resize(size, method=ResizeMethod.Squish),
        )
        fastai_dls = block_spec.dataloaders(folder, bs=batch, num_workers=workers)
        set_seed(0)
        learner = fastai_learner(fastai_dls, backbone)
        sizes["fastai vision_learner"] = parameters(learner.model)
        contender = harness.Contender(
            "fastai vision_learner", fastai_block(learner), workers=workers
        )
        contenders.append(contender)
    title = (
        f"(b) input-bound: {backbone}, {size} px, batch {batch}, {len(train_paths)} training "
        f"images ({width}x{height} JPEGs), one epoch a block"
    )
    return run(args, title, contenders, sizes, TARGETS_B, data="the same JPEG files")


def run(args, title, contenders, sizes, targets, data: str) -> str:
    if not contenders:
        return f"## {title}\n\nno contender selected"
    params = ", ".join(f"{name} {count:,}" for name, count in sizes.items())
    head = harness.header(
        title, contenders, data=data, rounds=args.rounds, trained_parameters=params
    )
    print(head)
    result = harness.measure(contenders, args.rounds, warmup=args.warmup)
    baseline = contenders[0].name
    table = harness.speed_table(result, baseline, targets if baseline == "torso" else None)
    return "\n\n".join([head, table, harness.footer()])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_arguments(parser, rounds=5)
    parser.add_argument("--setting", choices=["a", "b", "both"], default="both")
    parser.add_argument("--steps", type=int, default=3, help="(a) batches a block (3)")
    parser.add_argument("--images", type=int, default=320, help="(b) JPEGs to write (320)")
    parser.add_argument("--workers", type=int, default=0, help="(b) loader workers, all (0)")
    parser.add_argument("--data", type=Path, default=None, help="(b) where to write the JPEGs")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds = min(args.rounds, 2)
    harness.start(args)
    texts = []
    if args.setting in ("a", "both"):
        texts.append(setting_a(args))
    if args.setting in ("b", "both"):
        with tempfile.TemporaryDirectory(dir=args.data) as temporary:
            texts.append(setting_b(args, Path(temporary) / "images"))
    harness.publish(args, "\n\n".join(texts))


if __name__ == "__main__":
    main()
