"""The Learner's AdamW on a CPU is torch's fused kernel, kept correct when a parameter's gradient
or moments are in another memory layout than the parameter (the kernel pairs elements by memory
position): every step equals torch's unfused AdamW."""

from __future__ import annotations

import torch
from torch import nn

from torso.train.optimizer import AdamW, create_optimizer


def conv_weights():
    torch.manual_seed(0)
    return torch.randn(8, 4, 3, 3), torch.randn(8, 4, 3, 3)


def stepped(optimizer_class, fused, state_layout, grad_layout):
    """A channels_last weight stepped twice, its moments reloaded in `state_layout` between the
    steps (as a resumed run loads them) and its gradients given in `grad_layout`."""
    weight, grad = conv_weights()
    parameter = nn.Parameter(weight.contiguous(memory_format=torch.channels_last))
    options = {"lr": 0.1, "betas": (0.9, 0.99), "eps": 1e-5, "fused": fused}
    optimizer = optimizer_class([parameter], **options)
    parameter.grad = grad.contiguous(memory_format=grad_layout)
    optimizer.step()
    saved = optimizer.state_dict()
    for values in saved["state"].values():
        for key, value in values.items():
            if value.ndim == 4:
                values[key] = value.contiguous(memory_format=state_layout)
    optimizer = optimizer_class([parameter], **options)
    optimizer.load_state_dict(saved)
    parameter.grad = (grad * 0.5).contiguous(memory_format=grad_layout)
    optimizer.step()
    return parameter.detach().clone()


def test_fused_steps_equal_unfused_whatever_the_layouts():
    for state_layout in (torch.contiguous_format, torch.channels_last):
        for grad_layout in (torch.contiguous_format, torch.channels_last):
            expected = stepped(torch.optim.AdamW, None, state_layout, grad_layout)
            produced = stepped(AdamW, True, state_layout, grad_layout)
            assert torch.allclose(produced, expected, atol=1e-6), (state_layout, grad_layout)


def test_torchs_fused_kernel_alone_would_be_wrong_here():
    """What `AdamW.match_layouts` guards against (if torch ever fixes it, this test says so and
    the guard can go)."""
    expected = stepped(torch.optim.AdamW, None, torch.contiguous_format, torch.channels_last)
    plain_fused = stepped(torch.optim.AdamW, True, torch.contiguous_format, torch.channels_last)
    assert not torch.allclose(plain_fused, expected, atol=1e-3)


def test_the_learners_optimiser_is_fused_on_a_cpu():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    optimizer = create_optimizer(model, [list(model.parameters())], 0.01)
    assert isinstance(optimizer, AdamW) and optimizer.defaults["fused"] is True
