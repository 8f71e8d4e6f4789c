"""U-Net training and inference speed: torso's Learner vs a plain loop vs smp vs fastai.

Every model has a resnet18 encoder with random weights and trains on the same in-memory images
and masks (`--size` px, `--classes` classes, batches of `--batch`) with AdamW and cross-entropy,
one thread by default. Training contenders, interleaved block by block (benchmarks/harness.py):

* torso's `Learner` (task `segment`, its default memory-format choice) on `DynamicUnet` with
  fastai's decoder widths, and on the capped one (`decoder_width=256`);
* a plain loop on the same fastai-width `DynamicUnet` (default layout), to show what the
  Learner adds or costs over the bare model;
* a plain loop on smp's `Unet("resnet18")` (when installed);
* fastai's own `unet_learner(...).fit(1)` (when installed): its model and its loop.

Inference (eval, no gradients) runs the same way on each model: torso's in the layout its Learner
chose. Targets: torso fastai-width >= 1.2x fastai's `unet_learner`; torso capped >= 1.3x smp;
the Learner >= 1.0x the plain loop on the same model. It also checks that torso's U-Net gives
fastai's output with fastai's weights.

    python benchmarks/unet.py                     # 128 px, batch 8, 4 classes, 2 steps a block
    python benchmarks/unet.py --quick --contenders torso plain

If the comparison were unfair the ratios would show it: a contender keeping its best round would
gain the spread shown in the min-max; a Learner using a slower memory format than a plain loop
on the same model would show up as "torso Learner / plain loop" below 1.0x.
"""

from __future__ import annotations

import argparse

import harness
import torch
from contenders import ImageCounter, adamw, fastai_block, parameters, plain_block, torso_block
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torso.models.bodies import create_body
from torso.models.segmentation import DynamicUnet
from torso.tasks import get_task
from torso.train.learner import Learner, set_seed
from torso.train.placement import stored_channels_last

FASTAI_WIDTHS = "torso Learner, fastai widths"
CAPPED = "torso Learner, decoder_width=256"
PLAIN = "plain loop, fastai widths"
SMP = 'smp Unet("resnet18")'
FASTAI = "fastai unet_learner"


def loss(pred, y):
    return nn.functional.cross_entropy(pred, y)


def fastai_parity(args) -> float | None:
    """Largest output difference between fastai's DynamicUnet and torso's holding its weights
    (copied in order; torso's body gets identity stats: fastai normalises in its data)."""
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
    torso_model.load_state_dict(dict(zip(torso_model.state_dict(), state.values(), strict=True)))
    fastai_model.eval()
    torso_model.eval()
    images = torch.rand(2, 3, args.size, args.size + 32)
    with torch.no_grad():
        return (fastai_model(images) - torso_model(images)).abs().max().item()


def inference_block(model: nn.Module, images: list[torch.Tensor], channels_last: bool):
    def block() -> int:
        model.eval()
        with torch.inference_mode():
            for x in images:
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                model(x)
        return sum(len(x) for x in images)

    return block


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_arguments(parser, rounds=3)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2, help="batches a block (2)")
    parser.add_argument("--decoder-width", type=int, default=256)
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.batch, args.steps, args.rounds = 32, 2, 1, min(args.rounds, 2)
    harness.start(args)
    generator = torch.Generator().manual_seed(0)
    count = args.steps * args.batch
    x = torch.rand(count, 3, args.size, args.size, generator=generator)
    y = torch.randint(0, args.classes, (count, args.size, args.size), generator=generator)
    data = TensorDataset(x, y)
    batches = list(torch.split(x, args.batch))

    def loader():
        return DataLoader(data, batch_size=args.batch, shuffle=False)

    def unet(width: int | None = None) -> nn.Module:
        set_seed(0)
        options = {} if width is None else {"decoder_width": width}
        return DynamicUnet(create_body("tv:resnet18"), args.classes, **options)

    train, infer, models, layouts = [], [], {}, {}
    for name, width in ((FASTAI_WIDTHS, None), (CAPPED, args.decoder_width)):
        if harness.wanted(args, "torso"):
            model, counter = unet(width), ImageCounter()
            learner = Learner(model, loader(), None, task=get_task("segment"), callbacks=[counter])
            train.append(harness.Contender(name, torso_block(learner, counter)))
            models[name] = model
    if harness.wanted(args, "plain"):
        model = unet()
        train.append(harness.Contender(PLAIN, plain_block(model, adamw(model), loader(), loss)))
        models[PLAIN] = model
    if harness.wanted(args, "smp") and harness.optional("segmentation_models_pytorch", SMP):
        import segmentation_models_pytorch as smp

        set_seed(0)
        model = smp.Unet("resnet18", encoder_weights=None, classes=args.classes)
        train.append(harness.Contender(SMP, plain_block(model, adamw(model), loader(), loss)))
        models[SMP] = model
    if harness.wanted(args, "fastai") and harness.optional("fastai", FASTAI):
        from fastai.data.core import DataLoaders
        from fastai.data.load import DataLoader as FastaiLoader
        from fastai.losses import CrossEntropyLossFlat
        from fastai.vision.all import resnet18, unet_learner

        samples = list(zip(x, y, strict=True))
        fastai_data = DataLoaders(
            FastaiLoader(samples, bs=args.batch, shuffle=False, drop_last=False),
            FastaiLoader(samples[: args.batch], bs=args.batch),
        )
        set_seed(0)
        learner = unet_learner(
            fastai_data,
            resnet18,
            n_out=args.classes,
            pretrained=False,
            normalize=False,
            loss_func=CrossEntropyLossFlat(axis=1),
        )
        train.append(harness.Contender(FASTAI, fastai_block(learner)))
        models[FASTAI] = learner.model

    difference = fastai_parity(args)
    title = (
        f"U-Net training, resnet18 encoder, {args.size} px, {args.classes} classes, batch "
        f"{args.batch}, {args.steps} steps a block"
    )
    params = ", ".join(f"{name} {parameters(model):,}" for name, model in models.items())
    head = harness.header(title, train, data="the same in-memory tensors", parameters=params)
    if difference is not None:
        head += (
            "\n- torso's U-Net with fastai's weights vs fastai's: largest output difference "
            f"{difference:.3g}"
        )
    print(head)
    trained = harness.measure(train, args.rounds, warmup=args.warmup)
    for name, model in models.items():
        layouts[name] = "channels_last" if stored_channels_last(model) else "default"
        infer.append(
            harness.Contender(
                name, inference_block(model, batches, layouts[name] == "channels_last")
            )
        )
    print("inference:")
    inferred = harness.measure(infer, args.rounds, warmup=args.warmup)
    pairs = [
        (FASTAI_WIDTHS, FASTAI, 1.2),
        (CAPPED, SMP, 1.3),
        (FASTAI_WIDTHS, PLAIN, 1.0),
    ]
    extra = {name: {"memory format": layouts[name]} for name in models}
    text = "\n\n".join(
        [
            head,
            "Training:",
            harness.rate_table(trained, extra),
            harness.ratio_table(trained, pairs),
            "Inference (eval, no gradients, model only):",
            harness.rate_table(inferred, extra),
            harness.ratio_table(inferred, [(a, b, None) for a, b, _ in pairs]),
            harness.footer(),
        ]
    )
    harness.publish(args, text)


if __name__ == "__main__":
    main()
