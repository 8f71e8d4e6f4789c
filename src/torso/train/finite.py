"""Stopping a run whose numbers stopped being numbers: a non-finite loss or weights end the
training with `NonFiniteError` (exit status 1) before anything non-finite is saved."""

from __future__ import annotations

import math

import torch
from torch import nn

from torso.errors import TorsoError


class NonFiniteError(TorsoError):
    """The loss or the weights became NaN or infinite: the run cannot go on."""

    exit_code = 1


def check_loss(loss: float, epoch: int) -> None:
    """A `NonFiniteError` if the mean training loss of `epoch` (counted from 1) is not finite."""
    if not math.isfinite(loss):
        raise NonFiniteError(
            f"the training loss became {loss} in epoch {epoch}: "
            "the learning rate (or the weight decay) is probably too high"
        )


def non_finite_tensors(model: nn.Module) -> list[str]:
    """Names of the floating-point parameters and buffers of `model` holding NaN or inf.

    A NaN or inf makes its tensor's sum non-finite, so one pass of sums (about ten times
    cheaper than `isfinite` on every element) clears a healthy model; only when a sum is not
    finite (a bad value, or finite values adding up past the float range) is every tensor
    checked element by element."""
    values = [(n, v) for n, v in model.state_dict().items() if v.is_floating_point()]
    sums = [v.detach().sum(dtype=torch.float32) for _, v in values if v.numel()]
    if not sums or bool(torch.stack(sums).isfinite().all()):
        return []
    return [name for name, value in values if not bool(torch.isfinite(value).all())]


def check_weights(model: nn.Module, when: str) -> None:
    """A `NonFiniteError` naming the first bad tensor if any weight of `model` is not finite;
    `when` completes the sentence ("in epoch 3", "so the model is not saved")."""
    bad = non_finite_tensors(model)
    if bad:
        raise NonFiniteError(
            f"{len(bad)} weight tensor(s) became NaN or infinite ({bad[0]}, ...) {when}: "
            "the learning rate or the weight decay is probably too high"
        )


def check_epoch(train_loss: float, model: nn.Module, epoch: int) -> None:
    """A `NonFiniteError` if epoch `epoch`'s training loss or `model`'s weights are not finite."""
    check_loss(train_loss, epoch)
    check_weights(model, f"in epoch {epoch}")
