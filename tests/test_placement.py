"""Choosing channels_last by measurement (torso.train.placement): the decision follows the clock,
the probe leaves no trace, an explicit choice wins, and training gives the same result either
way (to float rounding)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torso
from torso.tasks import get_task
from torso.train import placement
from torso.train.learner import Learner, set_seed


class RiggedClock:
    """A clock under which a pass in `slow` layout (True: channels_last) takes 10 s, the other
    1 s; it reads the model's layout to know which pass it times."""

    def __init__(self, model: nn.Module, slow: bool):
        self.model, self.slow, self.now, self.reads = model, slow, 0.0, 0

    def __call__(self) -> float:
        self.reads += 1
        if self.reads % 2 == 0:  # the end of a pass
            weight = next(p for p in self.model.parameters() if p.ndim == 4)
            layout = weight.is_contiguous(memory_format=torch.channels_last)
            layout = layout and not weight.is_contiguous()
            self.now += 10.0 if layout == self.slow else 1.0
        return self.now


@pytest.fixture(autouse=True)
def fresh_decisions():
    placement.forget_decisions()
    yield
    placement.forget_decisions()


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.Dropout(0.5),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )


def probe(model, monkeypatch, slow):
    clock = RiggedClock(model, slow)
    monkeypatch.setattr(placement, "PROBE_CLOCK", clock)
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 0])
    loss = nn.functional.cross_entropy
    return placement.probe_channels_last(model, torch.device("cpu"), (x, y), model, loss), clock


@pytest.mark.parametrize("slow", [True, False])
def test_the_faster_layout_is_chosen_and_kept(monkeypatch, slow):
    model = net().train()
    choice, clock = probe(model, monkeypatch, slow)
    assert choice is (not slow)
    assert clock.reads == 2 * 2 * placement.PROBE_PASSES  # two passes each way
    weight = model[0].weight
    assert (
        weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    ) is choice


def test_the_probe_leaves_buffers_gradients_and_random_state_alone(monkeypatch):
    model = net().train()
    buffers = [b.clone() for b in model.buffers()]
    random_state = torch.get_rng_state()
    probe(model, monkeypatch, slow=True)
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers(), strict=True))
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), random_state)


def test_a_decision_is_remembered_for_the_same_kind_of_model_and_batch(monkeypatch):
    choice, clock = probe(net(), monkeypatch, slow=True)
    again, second_clock = probe(net(), monkeypatch, slow=False)  # would choose the other way
    assert again == choice and second_clock.reads == 0


def test_explicit_choice_wins_and_models_without_convolutions_are_not_probed():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert placement.wants_channels_last(net(), False, cpu) is False
    assert placement.wants_channels_last(net(), True, cpu) is True
    assert placement.wants_channels_last(net(), None, cpu) is None
    assert placement.wants_channels_last(net(), None, gpu) is True
    assert placement.wants_channels_last(nn.Linear(3, 3), None, cpu) is False
    # A compiled model is not probed (the probe would compile it in both layouts).
    assert placement.choose_memory_format(net(), None, cpu, compiled=True) is True


def fitted(channels_last, monkeypatch=None, slow=None):
    set_seed(0)
    model = torso.create_model("test_resnet", 3)
    if monkeypatch is not None:
        monkeypatch.setattr(placement, "PROBE_CLOCK", RiggedClock(model, slow))
    x, y = torch.rand(16, 3, 32, 32), torch.arange(16) % 3
    train = DataLoader(TensorDataset(x, y), batch_size=4)
    learner = Learner(model, train, None, task=get_task("classify"), channels_last=channels_last)
    learner.fit(2, 1e-2)
    return learner


@pytest.mark.parametrize("slow", [True, False])
def test_a_probed_learner_trains_as_one_told_the_chosen_layout(monkeypatch, slow):
    probed = fitted(None, monkeypatch, slow)
    assert probed.channels_last is (not slow)
    told = fitted(not slow)
    for a, b in zip(
        probed.model.state_dict().values(), told.model.state_dict().values(), strict=True
    ):
        assert torch.allclose(a.float(), b.float(), atol=1e-5)
    assert probed.history[-1]["train_loss"] == pytest.approx(
        told.history[-1]["train_loss"], rel=1e-5
    )


@pytest.mark.parametrize("slow", [True, False])
def test_inference_probe_keeps_the_faster_layout(monkeypatch, slow):
    model = net().eval()
    monkeypatch.setattr(placement, "PROBE_CLOCK", RiggedClock(model, slow))
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    expected = model(x)
    choice = placement.probe_inference_channels_last(model, torch.device("cpu"), x)
    assert choice is (not slow)
    weight = model[0].weight
    layout = weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    assert layout is choice
    assert torch.allclose(model(x), expected, atol=1e-6)


def test_embed_files_uses_the_measured_layout(monkeypatch, tmp_path):
    from PIL import Image

    from torso.tools.embed import embed_files, load_embedder

    embedder, identity = load_embedder("test_resnet", size=32)
    monkeypatch.setattr(placement, "PROBE_CLOCK", RiggedClock(embedder, slow=False))
    files = []
    for index in range(3):
        files.append(tmp_path / f"{index}.png")
        Image.new("RGB", (40, 30), (index * 60, 20, 90)).save(files[-1])
    result = embed_files(embedder, identity, files, tmp_path / "e.npy", num_workers=0, device="cpu")
    assert result.count == 3
    weight = next(p for p in embedder.parameters() if p.ndim == 4)
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


@pytest.mark.parametrize("slow", [True, False])
def test_a_resumed_run_trains_on_in_the_layout_it_was_saved_in(monkeypatch, slow, tmp_path):
    """The probe's choice rests on timings, which may differ in the resuming process: the
    saved state's layout wins, so the resumed run sums as the uninterrupted one did."""
    from torso.train.state import load_state, save_state

    first = fitted(None, monkeypatch, slow)  # probed: channels_last is (not slow)
    save_state(first, tmp_path / "state.safetensors")
    placement.forget_decisions()
    model = torso.create_model("test_resnet", 3)
    monkeypatch.setattr(placement, "PROBE_CLOCK", RiggedClock(model, not slow))  # other way
    x, y = torch.rand(16, 3, 32, 32), torch.arange(16) % 3
    train = DataLoader(TensorDataset(x, y), batch_size=4)
    resumed = Learner(model, train, None, task=get_task("classify"))
    load_state(resumed, tmp_path / "state.safetensors")
    assert resumed.channels_last is (not slow)
    resumed.fit(1, 1e-2)  # no probe runs: the layout is the saved one
    assert resumed.channels_last is (not slow)
    weight = next(p for p in resumed.model.parameters() if p.ndim == 4)
    stored = weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    assert stored is (not slow)
