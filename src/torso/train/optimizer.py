"""The optimiser of a Learner: AdamW over the parameter groups (betas 0.9/0.99 and eps 1e-5, as
fastai's Adam), with weight decay on weights only (none on normalisation layers nor biases), and
the per-group hyper-parameters the schedules set. On a CPU it is torch's fused AdamW (one
kernel over all the tensors; a single measurement, not the benchmark harness's, on a shared
machine: 0.036 s a step against 0.12 s for the default, 31M-parameter U-Net, one thread, so
indicative only); `AdamW` keeps its inputs in their parameters' memory layout, which the fused
kernel needs. Elsewhere torch's default."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from torso.errors import TorsoError
from torso.models.norm import is_norm_layer


def no_decay_parameters(model: nn.Module) -> set[int]:
    """Ids of the parameters that get no weight decay: normalisation layers' and all biases."""
    chosen: set[int] = set()
    for module in model.modules():
        norm = is_norm_layer(module)
        for name, parameter in module.named_parameters(recurse=False):
            if norm or name == "bias" or name.endswith("_bias"):
                chosen.add(id(parameter))
    return chosen


def create_optimizer(
    model: nn.Module, groups: Sequence[Sequence[nn.Parameter]], weight_decay: float
) -> torch.optim.Optimizer:
    """AdamW with two torch groups per parameter group `i` (`"group": i`): the weights, with
    `weight_decay` (`"decays": True`), and the parameters of `no_decay_parameters`, without."""
    no_decay = no_decay_parameters(model)
    torch_groups = []
    for index, group in enumerate(groups):
        decay = [p for p in group if id(p) not in no_decay]
        plain = [p for p in group if id(p) in no_decay]
        for params, rate in ((decay, weight_decay), (plain, 0.0)):
            if params:
                torch_groups.append(
                    {"params": params, "weight_decay": rate, "group": index, "decays": rate > 0}
                )
    fused = fused_on_cpu([p for group in groups for p in group])
    return AdamW(torch_groups, lr=1e-3, betas=(0.9, 0.99), eps=1e-5, fused=fused)


class AdamW(torch.optim.AdamW):
    """torch's AdamW, made safe for the fused kernel: it pairs a parameter's elements with its
    gradient's and moments' by memory position, so before a fused step every gradient and
    moment in another memory layout than its parameter (a channels_last weight with moments
    loaded from a saved state, or a gradient autograd laid out otherwise) is copied into the
    parameter's layout. Unfused, torch's step reads any layout and this adds nothing."""

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        if self.defaults.get("fused"):
            self.match_layouts()
        return super().step(closure)

    def match_layouts(self) -> None:
        """Copy every gradient and moment whose strides differ from its parameter's into the
        parameter's layout."""
        for group in self.param_groups:
            for parameter in group["params"]:
                grad = parameter.grad
                if grad is not None and grad.stride() != parameter.stride():
                    parameter.grad = torch.empty_like(parameter).copy_(grad)
                state = self.state.get(parameter, {})
                for key, value in state.items():
                    if (
                        isinstance(value, torch.Tensor)
                        and value.shape == parameter.shape
                        and value.stride() != parameter.stride()
                    ):
                        state[key] = torch.empty_like(parameter).copy_(value)


def fused_on_cpu(params: Sequence[nn.Parameter]) -> bool | None:
    """True (the fused kernel) when every parameter is a floating-point tensor on the CPU,
    else None (torch's default)."""
    cpu = all(p.device.type == "cpu" and p.is_floating_point() for p in params)
    return True if params and cpu else None


def set_hyper(
    optimizer: torch.optim.Optimizer,
    lrs: Sequence[float],
    beta1: float | None = None,
    weight_decay: float | None = None,
) -> None:
    """Set each parameter group's learning rate (`lrs[i]` for group `i`), and when given Adam's
    beta1 (the momentum) and the weight decay of the groups that decay."""
    for group in optimizer.param_groups:
        group["lr"] = lrs[group["group"]]
        if beta1 is not None:
            group["betas"] = (beta1, group["betas"][1])
        if weight_decay is not None and group["decays"]:
            group["weight_decay"] = weight_decay


def learning_rates(optimizer: torch.optim.Optimizer, count: int) -> list[float]:
    """The current learning rate of each of the `count` parameter groups."""
    rates = [0.0] * count
    for group in optimizer.param_groups:
        rates[group["group"]] = group["lr"]
    return rates


def parameter_groups(
    model: nn.Module, splitter: Callable[[nn.Module], list[list[nn.Parameter]]] | None = None
) -> list[list[nn.Parameter]]:
    """`splitter(model)`, by default `torso.models.param_groups(model)` (the body's groups, then
    the head), as lists; a TorsoError when there is nothing to train."""
    if splitter is None:
        from torso.models import param_groups as splitter
    groups = [list(group) for group in splitter(model)]
    if not groups or not any(groups):
        raise TorsoError("the model has no parameters to train")
    return groups


def freeze_groups(
    model: nn.Module, groups: Sequence[Sequence[nn.Parameter]], first: int, *, train_bn: bool
) -> None:
    """Train only `groups[first:]` of a model split by a custom splitter; with `train_bn` the
    normalisation layers keep training wherever they are (fastai's default)."""
    for index, group in enumerate(groups):
        for parameter in group:
            parameter.requires_grad_(index >= first)
    if train_bn:
        for module in filter(is_norm_layer, model.modules()):
            for parameter in module.parameters(recurse=False):
                parameter.requires_grad_(True)


def check_settings(*, weight_decay: float, accumulate: int) -> None:
    """A `TorsoError` for a weight decay that is negative or not finite, or an `accumulate`
    below 1."""
    if accumulate < 1:
        raise TorsoError(f"accumulate must be at least 1, got {accumulate}")
    if not 0 <= weight_decay < math.inf:
        raise TorsoError(f"weight_decay must be a finite number, 0 or more, got {weight_decay}")
