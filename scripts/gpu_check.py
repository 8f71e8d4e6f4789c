"""A short check of torso on a CUDA GPU: mixed precision, channels_last, torch.compile, speed.

CI has no GPU, so this is run by hand on a machine that has one:

    PYTHONPATH=src python scripts/gpu_check.py

It prints one line a check and exits non-zero if one fails. Data are random tensors made here.
"""

from __future__ import annotations

import sys
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torso
from torso.models.bodies import create_body
from torso.models.segmentation import DynamicUnet
from torso.tasks import get_task
from torso.train.learner import Learner


def learnable_data(count: int, size: int, classes: int) -> TensorDataset:
    """Images whose class is which colour channel is brightest: learnable in a few steps."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, classes, (count,), generator=generator)
    images = torch.rand(count, 3, size, size, generator=generator) * 0.5
    for index, label in enumerate(labels):
        images[index, label % 3] += 0.5
    return TensorDataset(images, labels)


def check_training() -> None:
    data = learnable_data(512, 64, 3)
    train = DataLoader(data, batch_size=64, shuffle=True)
    valid = DataLoader(data, batch_size=128)
    model = torso.create_model("resnet18", 3)
    learner = Learner(model, train, valid, task=get_task("classify"))
    assert learner.device.type == "cuda", learner.device
    assert learner.mixed_precision in ("bf16", "fp16"), learner.mixed_precision
    assert learner.channels_last
    learner.fit_one_cycle(3, 3e-3)
    first, last = learner.history[0], learner.history[-1]
    print(
        f"training on {torch.cuda.get_device_name()}: {learner.mixed_precision} autocast, "
        f"channels_last; loss {first['train_loss']:.3f} -> {last['train_loss']:.3f}, "
        f"accuracy {last['accuracy']:.3f}"
    )
    assert last["train_loss"] < first["train_loss"] and last["accuracy"] > 0.9


@torch.no_grad()
def check_compiled_unet() -> None:
    model = DynamicUnet(create_body("tv:resnet34"), 3).cuda().eval()
    images = torch.rand(2, 3, 224, 224, device="cuda")
    eager = model(images)
    compiled = torch.compile(model)(images)
    error = (eager - compiled).abs().max().item()
    exported = torch.export.export(model, (images,))
    error_export = (exported.module()(images) - eager).abs().max().item()
    print(
        f"DynamicUnet: torch.compile max error {error:.2e}, torch.export max error "
        f"{error_export:.2e}, output {tuple(eager.shape)}"
    )
    assert error < 1e-3 and error_export < 1e-4


def images_per_second(step, batches: int) -> float:
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(batches):
        step()
    torch.cuda.synchronize()
    return batches / (time.perf_counter() - start)


def check_speed() -> None:
    batch = 64
    data = learnable_data(batch * 20, 128, 10)
    loader = DataLoader(data, batch_size=batch, shuffle=True, drop_last=True, pin_memory=True)

    learner = Learner(torso.create_model("resnet18", 10), loader, None, task=get_task("classify"))
    start = time.perf_counter()
    learner.fit_one_cycle(2, 1e-3)
    torch.cuda.synchronize()
    torso_rate = 2 * len(loader) * batch / (time.perf_counter() - start)

    model = torso.create_model("resnet18", 10).cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    for _ in range(2):
        for x, y in loader:
            x, y = x.cuda(non_blocking=True), y.cuda(non_blocking=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    torch.cuda.synchronize()
    plain_rate = 2 * len(loader) * batch / (time.perf_counter() - start)
    print(
        f"training images/s, resnet18 128 px batch {batch}: torso {torso_rate:.0f}, "
        f"plain fp32 loop {plain_rate:.0f} ({torso_rate / plain_rate:.2f}x)"
    )


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 1
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    failed = 0
    for check in (check_training, check_compiled_unet, check_speed):
        try:
            check()
        except Exception as error:  # report every check, then fail
            failed += 1
            print(f"FAILED {check.__name__}: {type(error).__name__}: {error}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
