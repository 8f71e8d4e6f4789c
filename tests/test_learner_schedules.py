"""Learning rates per group, the one-cycle schedule, fine_tune's phases, weight decay, freezing
and BatchNorm: every number here is computed by hand from fastai's definitions."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torso
from torso.errors import TorsoError
from torso.tasks import get_task
from torso.train.callbacks import Callback
from torso.train.learner import Learner, set_seed
from torso.train.schedules import (
    one_cycle_learning_rate,
    one_cycle_momentum,
    spread_learning_rate,
)


@pytest.mark.parametrize(
    "lr, expected",
    [
        (slice(1e-5, 1e-3), [1e-5, 1e-4, 1e-3]),
        (slice(1e-3), [1e-4, 1e-4, 1e-3]),
        (1e-3, [1e-3, 1e-3, 1e-3]),
        ([1e-4, 2e-4, 3e-4], [1e-4, 2e-4, 3e-4]),
    ],
)
def test_learning_rate_spreads_over_groups_as_in_fastai(lr, expected):
    assert spread_learning_rate(lr, 3) == pytest.approx(expected, rel=1e-12)


def test_slice_over_four_groups_is_geometric():
    assert spread_learning_rate(slice(1e-6, 1e-3), 4) == pytest.approx([1e-6, 1e-5, 1e-4, 1e-3])


@pytest.mark.parametrize("lr", [0, -1e-3, slice(0, 1e-3), [1e-3, 1e-3], float("nan")])
def test_bad_learning_rates_are_refused(lr):
    with pytest.raises(TorsoError):
        spread_learning_rate(lr, 3)


@pytest.mark.parametrize(
    "position, lr, momentum",
    [
        (0.0, 1e-2 / 25, 0.95),  # start: lr_max / div, high momentum
        (0.125, (1e-2 / 25 + 1e-2) / 2, 0.90),  # half-way through the warm-up
        (0.25, 1e-2, 0.85),  # the peak
        (0.625, (1e-2 + 1e-7) / 2, 0.90),  # half-way down
        (1.0, 1e-2 / 1e5, 0.95),  # the end: lr_max / div_final
    ],
)
def test_one_cycle_matches_hand_computed_values(position, lr, momentum):
    assert one_cycle_learning_rate(1e-2, position) == pytest.approx(lr, rel=1e-9)
    assert one_cycle_momentum(position) == pytest.approx(momentum, rel=1e-9)


class Recorder(Callback):
    """Records, at each batch, the learning rate and beta1 of each group, and which groups train."""

    def __init__(self):
        self.lrs, self.betas, self.trainable, self.body_norm_training = [], [], [], []

    def after_batch(self, learner):
        self.lrs.append(learner.learning_rates())
        self.betas.append(sorted({g["betas"][0] for g in learner.optimizer.param_groups}))
        groups = torso.param_groups(learner.model)
        self.trainable.append([any(p.requires_grad for p in g if p.ndim > 1) for g in groups])
        norms = [m for m in learner.model.body.modules() if isinstance(m, nn.BatchNorm2d)]
        self.body_norm_training.append(all(m.training for m in norms))


def tiny_learner(batches=8, callbacks=(), **options):
    set_seed(0)
    model = torso.create_model("test_resnet", 3)
    x = torch.rand(2 * batches, 3, 32, 32)
    y = torch.arange(2 * batches) % 3
    train = DataLoader(TensorDataset(x, y), batch_size=2)
    return Learner(model, train, None, task=get_task("classify"), callbacks=callbacks, **options)


def test_fit_one_cycle_sets_each_groups_rate_and_momentum_per_batch():
    recorder = Recorder()
    learner = tiny_learner(callbacks=[recorder])
    assert len(learner.groups) == 3
    learner.fit_one_cycle(1, slice(1e-4, 1e-2))
    peaks = [1e-4, 1e-3, 1e-2]
    # 8 batches: batch k runs at position k / 8.
    assert recorder.lrs[0] == pytest.approx([p / 25 for p in peaks], rel=1e-9)
    assert recorder.lrs[1] == pytest.approx([(p / 25 + p) / 2 for p in peaks], rel=1e-9)
    assert recorder.lrs[2] == pytest.approx(peaks, rel=1e-9)
    assert recorder.betas[0] == [pytest.approx(0.95)]
    assert recorder.betas[2] == [pytest.approx(0.85)]
    down = [one_cycle_learning_rate(p, 7 / 8) for p in peaks]
    assert recorder.lrs[7] == pytest.approx(down, rel=1e-9)


def test_fine_tune_trains_the_head_then_everything_with_fastais_rates():
    recorder = Recorder()
    learner = tiny_learner(batches=4, callbacks=[recorder])
    learner.fine_tune(1, base_lr=2e-3)
    # Phase 1, frozen: slice(2e-3) → [2e-4, 2e-4, 2e-3], div 25, first batch at lr / 25.
    assert recorder.lrs[0] == pytest.approx([2e-4 / 25, 2e-4 / 25, 2e-3 / 25], rel=1e-9)
    assert recorder.trainable[0] == [False, False, True]
    assert recorder.body_norm_training[0]  # train_bn: the body's BatchNorms keep training
    # Phase 2, unfrozen: base_lr halved, slice(1e-5, 1e-3), div 5.
    assert recorder.lrs[4] == pytest.approx([1e-5 / 5, 1e-4 / 5, 1e-3 / 5], rel=1e-9)
    assert recorder.trainable[4] == [True, True, True]
    # pct_start 0.3 over 4 batches: batch 1 sits at position 0.25, in the warm-up.
    warm = [one_cycle_learning_rate(p, 0.25, div=5, pct_start=0.3) for p in [1e-5, 1e-4, 1e-3]]
    assert recorder.lrs[5] == pytest.approx(warm, rel=1e-9)
    assert len(learner.history) == 2


def test_constant_fit_uses_the_given_rates():
    recorder = Recorder()
    learner = tiny_learner(batches=2, callbacks=[recorder])
    learner.fit(1, slice(1e-3))
    assert recorder.lrs == [pytest.approx([1e-4, 1e-4, 1e-3])] * 2


def test_no_weight_decay_on_norm_layers_and_biases():
    learner = tiny_learner(weight_decay=0.05)
    norm_or_bias = set()
    for module in learner.model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            if isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d) or name == "bias":
                norm_or_bias.add(id(parameter))
    seen = 0
    for group in learner.optimizer.param_groups:
        for parameter in group["params"]:
            seen += 1
            expected = 0.0 if id(parameter) in norm_or_bias else 0.05
            assert group["weight_decay"] == expected
    assert seen == sum(1 for _ in learner.model.parameters())
    assert isinstance(learner.optimizer, torch.optim.AdamW)


def test_frozen_batchnorm_stays_in_eval_mode_without_train_bn():
    recorder = Recorder()
    learner = tiny_learner(batches=2, callbacks=[recorder], train_bn=False)
    body_norm = next(m for m in learner.model.body.modules() if isinstance(m, nn.BatchNorm2d))
    before = body_norm.running_mean.clone()
    learner.freeze()
    learner.fit(1, 1e-3)
    assert recorder.body_norm_training == [False, False]
    assert not body_norm.weight.requires_grad
    assert torch.equal(body_norm.running_mean, before)
    head_norm = next(m for m in learner.model.head.modules() if isinstance(m, nn.BatchNorm1d))
    assert head_norm.weight.requires_grad


def test_gradient_accumulation_equals_a_larger_batch():
    """Two accumulated batches of 4 give the same step as one batch of 8 (no BatchNorm here)."""
    torch.manual_seed(0)
    x, y = torch.rand(16, 3, 8, 8), torch.arange(16) % 3

    def train(batch_size, accumulate):
        torch.manual_seed(1)
        model = nn.Sequential(nn.Flatten(), nn.Linear(192, 3))
        loader = DataLoader(TensorDataset(x, y), batch_size=batch_size)
        learner = Learner(
            model,
            loader,
            task=get_task("classify"),
            accumulate=accumulate,
            splitter=lambda m: [list(m.parameters())],
        )
        learner.fit(1, 1e-2)
        return model[1].weight.detach()

    assert torch.allclose(train(8, 1), train(4, 2), atol=1e-6)
    assert not torch.allclose(train(8, 1), train(4, 1), atol=1e-6)


def test_learner_refuses_bad_settings():
    with pytest.raises(TorsoError, match="accumulate"):
        tiny_learner(accumulate=0)
    with pytest.raises(TorsoError, match="fp16"):
        tiny_learner(mixed_precision="fp16", device="cpu")
    with pytest.raises(TorsoError, match="freeze_to"):
        tiny_learner().freeze_to(7)


def test_cpu_defaults_no_autocast_and_a_measured_memory_format():
    learner = tiny_learner(device="cpu")
    assert learner.mixed_precision == "no"
    assert learner.channels_last is None  # measured on the first training batch
    learner.fit(1, 1e-3)
    assert learner.channels_last in (True, False)
    weight = next(p for p in learner.model.parameters() if p.ndim == 4)
    assert weight.is_contiguous(memory_format=torch.channels_last) == learner.channels_last
    assert math.isclose(learner.weight_decay, 0.01)
    assert tiny_learner(device="cpu", channels_last=True).channels_last is True


def test_weight_decay_of_one_fit_does_not_stick():
    """A weight decay given to one call applies to that call only; the next call that gives
    none trains with the Learner's own (0.01), as fastai's `fit(wd=...)` does."""

    class DecayRecorder(Callback):
        def __init__(self):
            self.decays = []

        def after_batch(self, learner):
            self.decays.append(
                sorted({g["weight_decay"] for g in learner.optimizer.param_groups if g["decays"]})
            )

    recorder = DecayRecorder()
    learner = tiny_learner(batches=1, callbacks=[recorder])
    learner.fit(1, 1e-3, weight_decay=0.5)
    learner.fit(1, 1e-3)
    learner.fit_one_cycle(1, 1e-3)
    assert recorder.decays == [[0.5], [0.01], [0.01]]


def test_callbacks_see_every_event_in_order():
    from torso.train.callbacks import EVENTS

    class Events(Callback):
        def __init__(self):
            self.seen = []

    events = Events()
    for name in EVENTS:
        setattr(events, name, lambda learner, name=name: events.seen.append(name))
    x, y = torch.rand(4, 3, 8, 8), torch.arange(4) % 3
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 3))
    loader = DataLoader(TensorDataset(x, y), batch_size=2)
    learner = Learner(
        model,
        loader,
        loader,
        task=get_task("classify"),
        callbacks=[events],
        accumulate=2,
        splitter=lambda m: [list(m.parameters())],
    )
    learner.fit(1, 1e-3)
    accumulating = ["before_batch", "after_pred", "after_loss", "before_backward", "after_batch"]
    stepping = [*accumulating[:-1], "before_step", "after_step", "after_batch"]
    assert events.seen == [
        "before_fit",
        "before_epoch",
        *accumulating,
        *stepping,
        "before_validate",
        "after_validate",
        "after_epoch",
        "after_fit",
    ]
