"""Tasks: losses, metrics, decoding and descriptions, checked on hand-made outputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from torso.config import RunConfig
from torso.errors import TorsoError
from torso.tasks import get_task


def run_metrics(task, config, outputs, targets):
    metrics = task.metrics(config)
    for metric in metrics.values():
        metric.update(*task.metric_inputs(outputs, targets))
    return {name: float(metric.compute()) for name, metric in metrics.items()}


def test_classify_loss_metrics_and_decoding():
    task = get_task("classify")
    outputs = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0], [4.0, 0.0, 0.0]])
    targets = torch.tensor([0, 1, 1, 2])
    assert task.loss(outputs, targets).item() == pytest.approx(
        F.cross_entropy(outputs, targets).item()
    )
    assert task.loss(outputs, targets, reduction="none").shape == (4,)
    values = run_metrics(task, {"num_outputs": 3}, outputs, targets)
    assert values["accuracy"] == pytest.approx(0.5)
    assert values["error_rate"] == pytest.approx(0.5)
    assert "top_5_accuracy" not in values  # only 3 classes
    activations = task.activation(outputs)
    assert torch.allclose(activations.sum(dim=1), torch.ones(4))
    assert task.decode(activations).tolist() == [0, 1, 2, 0]
    record = task.describe(activations[:1], ["cat", "dog", "fox"])[0]
    assert record["prediction"] == "cat"
    assert record["probability"] == pytest.approx(math.exp(3) / (math.exp(3) + 2), abs=1e-6)


def test_classify_top_k_and_label_smoothing():
    task = get_task("classify", label_smoothing=0.1, top_k=2)
    outputs = torch.tensor([[3.0, 2.0, 0.0], [0.0, 1.0, 2.0]])
    targets = torch.tensor([1, 0])
    values = run_metrics(task, {"num_outputs": 3}, outputs, targets)
    assert values["top_2_accuracy"] == pytest.approx(0.5)
    smoothed = F.cross_entropy(outputs, targets, label_smoothing=0.1)
    assert task.loss(outputs, targets).item() == pytest.approx(smoothed.item())


def test_multilabel_threshold_accuracy_and_f1():
    task = get_task("multilabel", threshold=0.5)
    outputs = torch.tensor([[5.0, -5.0, 5.0], [-5.0, -5.0, 5.0]])  # predicts {0, 2} and {2}
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    values = run_metrics(task, {"num_outputs": 3}, outputs, targets)
    assert values["accuracy"] == pytest.approx(5 / 6)
    # micro F1: tp = 2, fp = 1, fn = 0 → 2·2 / (2·2 + 1) = 0.8
    assert values["f1"] == pytest.approx(0.8)
    expected = F.binary_cross_entropy_with_logits(outputs, targets)
    assert task.loss(outputs, targets).item() == pytest.approx(expected.item())
    assert task.loss(outputs, targets, reduction="none").shape == (2,)
    decoded = task.decode(task.activation(outputs))
    assert decoded.tolist() == [[True, False, True], [False, False, True]]
    record = task.describe(task.activation(outputs)[:1], ["red", "green", "blue"])[0]
    assert record["prediction"] == "red blue"


def test_prediction_records_give_every_class_probability_after_the_prediction():
    classify = get_task("classify")
    probabilities = torch.tensor([[0.1, 0.7, 0.2]])
    record = classify.describe(probabilities, ["cat", "dog", "fox"])[0]
    assert list(record) == ["prediction", "probability", "p_cat", "p_dog", "p_fox"]
    assert record["prediction"] == "dog" and record["probability"] == pytest.approx(0.7)
    assert record["p_fox"] == pytest.approx(0.2)
    multilabel = get_task("multilabel")
    record = multilabel.describe(torch.tensor([[0.9, 0.2, 0.6]]), ["red", "green", "blue"])[0]
    assert list(record) == ["prediction", "p_red", "p_green", "p_blue"]
    assert record["prediction"] == "red blue" and record["p_green"] == pytest.approx(0.2)


def test_multilabel_metrics_use_probabilities_even_for_small_logits():
    """Logits inside [0, 1] must not be mistaken for probabilities (0.3 → p = 0.57 ≥ 0.5)."""
    task = get_task("multilabel")
    values = run_metrics(
        task, {"num_outputs": 2}, torch.tensor([[0.3, -0.3]]), torch.tensor([[1.0, 0.0]])
    )
    assert values["accuracy"] == 1.0


def test_regress_losses_and_metrics():
    outputs = torch.tensor([[1.0], [2.0], [4.0]])
    targets = torch.tensor([1.0, 3.0, 2.0])  # (N,) targets are accepted for one output
    mse = get_task("regress")
    assert mse.loss(outputs, targets).item() == pytest.approx((0 + 1 + 4) / 3)
    assert get_task("regress", loss="l1").loss(outputs, targets).item() == pytest.approx(1.0)
    values = run_metrics(mse, {"num_outputs": 1}, outputs, targets)
    assert values["mae"] == pytest.approx(1.0)
    assert values["rmse"] == pytest.approx(math.sqrt(5 / 3))
    assert mse.describe(outputs[:1], None) == [{"value": 1.0}]


def test_regress_y_range_goes_to_the_head():
    task = get_task("regress", y_range=(0, 10))
    config = RunConfig("regress", "test_resnet", 2, 32, task_options=task.options)
    assert task.head_options(config)["y_range"] == (0.0, 10.0)
    model = task.build_model(config)
    outputs = model.eval()(torch.rand(2, 3, 32, 32) * 100)
    assert outputs.shape == (2, 2) and (outputs >= 0).all() and (outputs <= 10).all()


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("nope", {}, "unknown task"),
        ("classify", {"label_smoothing": 1.5}, "label_smoothing"),
        ("classify", {"colour": "red"}, "bad option"),
        ("multilabel", {"threshold": 1.0}, "threshold"),
        ("regress", {"loss": "huber"}, "loss"),
        ("regress", {"y_range": (3, 1)}, "y_range"),
    ],
)
def test_bad_task_options_raise_clear_errors(name, options, message):
    with pytest.raises(TorsoError, match=message):
        get_task(name, **options)


def test_task_options_survive_json():
    import json

    task = get_task("regress", loss="l1", y_range=(0, 1))
    again = get_task("regress", **json.loads(json.dumps(task.options)))
    assert again.options == task.options
