"""Training and inference speed of torso's U-Net next to smp's Unet and fastai's unet_learner.

All models get a resnet18 encoder with random weights, `--size` px images, `--classes` classes
and batches of `--batch`, and run the same loop (Adam, cross-entropy): `--warmup` steps untimed,
then `--steps` timed, `--rounds` times in turn; the best round counts. fastai's model is the one
`unet_learner` builds (`create_unet_model`); a last row runs `unet_learner(...).fit(1)` itself,
fastai's loop included, timing the training phase after its first batch. smp and fastai rows
appear when those packages are importable (`pip install 'torso[bench]'`).

    python benchmarks/unet.py                       # CPU, batch 8, 128 px, 4 classes
    python benchmarks/unet.py --device cuda --steps 20
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from torso.models.bodies import create_body
from torso.models.segmentation import DynamicUnet


@dataclass
class Result:
    name: str
    parameters: int
    gigaflops: float | None
    train_images_per_second: float
    inference_images_per_second: float | None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Runner:
    """Training and inference steps of one model on fixed random images and masks."""

    def __init__(self, model: nn.Module, args: argparse.Namespace, device: torch.device):
        self.model = model.to(device)
        self.args = args
        self.device = device
        self.images = torch.rand(args.batch, 3, args.size, args.size, device=device)
        self.masks = torch.randint(
            0, args.classes, (args.batch, args.size, args.size), device=device
        )
        self.optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        self.loss_function = nn.CrossEntropyLoss()

    def train_step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.loss_function(self.model(self.images), self.masks).backward()
        self.optimizer.step()

    def measure(self) -> tuple[float, float]:
        """(training, inference) images per second."""
        self.model.train()
        train = images_per_second(self.train_step, self.args, self.device)
        self.model.eval()
        with torch.no_grad():
            inference = images_per_second(lambda: self.model(self.images), self.args, self.device)
        return train, inference


def images_per_second(step: Callable[[], object], args: argparse.Namespace, device) -> float:
    for _ in range(args.warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    synchronize(device)
    return args.steps * args.batch / (time.perf_counter() - start)


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_gigaflops(model: nn.Module, size: int, device: torch.device) -> float:
    """Floating-point operations of one image's forward pass, in billions (load-independent)."""
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.rand(1, 3, size, size, device=device))
    return counter.get_total_flops() / 1e9


def candidates(args: argparse.Namespace) -> list[tuple[str, Callable[[], nn.Module]]]:
    """(name, builder) of every model that can be built here."""
    found: list[tuple[str, Callable[[], nn.Module]]] = [
        (
            "torso DynamicUnet (fastai widths)",
            lambda: DynamicUnet(create_body("tv:resnet18"), args.classes),
        ),
        (
            f"torso DynamicUnet decoder_width={args.decoder_width}",
            lambda: DynamicUnet(
                create_body("tv:resnet18"), args.classes, decoder_width=args.decoder_width
            ),
        ),
    ]
    try:
        import segmentation_models_pytorch as smp
    except ImportError:
        print("segmentation_models_pytorch is not installed: no smp row")
    else:
        found.append(
            (
                'smp Unet("resnet18")',
                lambda: smp.Unet("resnet18", encoder_weights=None, classes=args.classes),
            )
        )
    try:
        from fastai.vision.all import create_unet_model, resnet18
    except ImportError:
        print("fastai is not installed: no fastai rows")
    else:
        found.append(
            (
                "fastai unet_learner's model",
                lambda: create_unet_model(
                    resnet18, args.classes, (args.size, args.size), pretrained=False
                ),
            )
        )
    return found


def fastai_parity(args: argparse.Namespace) -> float | None:
    """Largest output difference between fastai's DynamicUnet and torso's holding its weights.

    The weights are copied in order (both state dicts list the same tensors in the same order);
    torso's body gets identity stats because fastai normalises in the data pipeline instead.
    """
    try:
        from fastai.vision.all import create_unet_model, resnet18
    except ImportError:
        return None
    fastai_model = create_unet_model(
        resnet18, args.classes, (args.size, args.size), pretrained=False, self_attention=True
    )
    identity = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    torso_model = DynamicUnet(
        create_body("tv:resnet18", stats=identity), args.classes, self_attention=True
    )
    state = fastai_model.state_dict()
    for name in state:
        if name.endswith("gamma"):  # self-attention starts switched off; switch it on
            state[name] = torch.full_like(state[name], 0.5)
    fastai_model.load_state_dict(state)
    torso_names = list(torso_model.state_dict())
    torso_model.load_state_dict(dict(zip(torso_names, state.values(), strict=True)))
    fastai_model.eval()
    torso_model.eval()
    images = torch.rand(2, 3, args.size, args.size + 32)
    with torch.no_grad():
        return (fastai_model(images) - torso_model(images)).abs().max().item()


def fastai_learner_fit(args: argparse.Namespace, device: torch.device) -> Result | None:
    """fastai's own loop: `unet_learner(...).fit(1)` on random data, training phase timed."""
    try:
        from fastai.callback.core import Callback
        from fastai.data.core import DataLoaders
        from fastai.data.load import DataLoader
        from fastai.losses import CrossEntropyLossFlat
        from fastai.vision.all import resnet18, unet_learner
    except ImportError:
        return None

    class TrainingTimer(Callback):
        """Time from the end of the first training batch to the end of the training phase."""

        def before_fit(self) -> None:
            self.start = None
            self.batches = 0

        def after_batch(self) -> None:
            if not self.training:
                return
            synchronize(device)
            if self.start is None:
                self.start = time.perf_counter()
            else:
                self.batches += 1

        def after_train(self) -> None:
            synchronize(device)
            self.elapsed = time.perf_counter() - self.start

    batches = args.steps + 1
    samples = [
        (
            torch.rand(3, args.size, args.size),
            torch.randint(0, args.classes, (args.size, args.size)),
        )
        for _ in range(batches * args.batch)
    ]
    train = DataLoader(samples, bs=args.batch, shuffle=False, drop_last=True, device=device)
    valid = DataLoader(samples[: args.batch], bs=args.batch, device=device)
    timer = TrainingTimer()
    learner = unet_learner(
        DataLoaders(train, valid, device=device),
        resnet18,
        n_out=args.classes,
        pretrained=False,
        loss_func=CrossEntropyLossFlat(axis=1),
        cbs=[timer],
    )
    with learner.no_bar(), learner.no_logging():
        learner.fit(1)
    speed = timer.batches * args.batch / timer.elapsed
    return Result("fastai unet_learner.fit(1)", count(learner.model), None, speed, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--rounds", type=int, default=2, help="measurements per model")
    parser.add_argument("--decoder-width", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch's default)")
    parser.add_argument("--no-fastai-fit", action="store_true", help="skip the learner row")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)

    difference = fastai_parity(args)
    if difference is not None:
        print(
            "torso's DynamicUnet with fastai's weights (self-attention on) vs fastai's: "
            f"largest output difference {difference:.3g}"
        )
    runners = {name: Runner(build(), args, device) for name, build in candidates(args)}
    best: dict[str, tuple[float, float]] = {name: (0.0, 0.0) for name in runners}
    # Rounds interleave the models, and the best round counts, so that a burst of load from
    # other processes on a shared machine does not land on one model only.
    for round_index in range(args.rounds):
        for name, runner in runners.items():
            train, inference = runner.measure()
            print(
                f"round {round_index + 1} {name}: {train:.2f} img/s training, "
                f"{inference:.2f} img/s inference"
            )
            best[name] = (max(best[name][0], train), max(best[name][1], inference))
    results = [
        Result(
            name,
            count(runner.model),
            forward_gigaflops(runner.model, args.size, device),
            *best[name],
        )
        for name, runner in runners.items()
    ]
    del runners
    if not args.no_fastai_fit:
        try:
            fitted = fastai_learner_fit(args, device)
        except Exception as error:  # a benchmark row, not torso: report and go on
            print(f"fastai unet_learner.fit failed: {type(error).__name__}: {error}")
            fitted = None
        if fitted is not None:
            results.append(fitted)
            print(f"{fitted.name}: {fitted.train_images_per_second:.2f} img/s training")

    references = {
        "fastai": next((r for r in results if r.name.startswith("fastai unet_learner's")), None),
        "smp": next((r for r in results if r.name.startswith("smp")), None),
    }
    threads = torch.get_num_threads() if device.type == "cpu" else None
    where = f"{device.type}" + (f", {threads} threads" if threads else "")
    table = Table(
        title=f"U-Net, resnet18 encoder, {args.size} px, {args.classes} classes, "
        f"batch {args.batch}, {args.steps} timed steps ({where})"
    )
    for column in ("model", "parameters", "GFLOPs/img", "train img/s", "inference img/s"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for label in references:
        table.add_column(f"train × {label}", justify="right")
    for result in results:
        ratios = [
            f"{result.train_images_per_second / ref.train_images_per_second:.2f}" if ref else "-"
            for ref in references.values()
        ]
        inference = result.inference_images_per_second
        table.add_row(
            result.name,
            f"{result.parameters:,}",
            f"{result.gigaflops:.2f}" if result.gigaflops is not None else "-",
            f"{result.train_images_per_second:.2f}",
            f"{inference:.2f}" if inference is not None else "-",
            *ratios,
        )
    Console(width=132).print(table)


if __name__ == "__main__":
    main()
