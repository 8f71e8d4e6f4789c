"""The Learner learns: generated data, tiny timm models, levels stated per task; determinism,
lr_find, predictions and callbacks."""

from __future__ import annotations

import io

import pytest
import torch
from test_learner_shapes import colour_blobs, loaders, shapes, squares

from torso.config import RunConfig
from torso.errors import TorsoError
from torso.predictor import load
from torso.tasks import get_task
from torso.train.callbacks import (
    CSVLog,
    EarlyStopping,
    Progress,
    SaveBest,
    TensorBoard,
    tensorboard_available,
)
from torso.train.learner import Learner, set_seed
from torso.train.lr_find import valley


def make_learner(task, make, train, valid, num_outputs, *, seed=0, **options):
    set_seed(seed)
    train_loader, valid_loader = loaders(make, train, valid)
    config = RunConfig(task.name, "test_resnet", num_outputs, 32, task_options=task.options)
    model = task.build_model(config)
    return Learner(model, train_loader, valid_loader, task=task, config=config.to_dict(), **options)


def test_classification_reaches_90_percent_on_shapes():
    learner = make_learner(get_task("classify"), shapes, 384, 96, 3)
    learner.fit_one_cycle(4, 1e-2)
    assert learner.history[-1]["accuracy"] >= 0.90
    assert learner.history[-1]["valid_loss"] < learner.history[0]["train_loss"]


def test_multilabel_reaches_f1_of_090_on_colour_blobs():
    learner = make_learner(get_task("multilabel"), colour_blobs, 256, 64, 3)
    learner.fit_one_cycle(5, 1e-2)
    assert learner.history[-1]["f1"] >= 0.90


def test_regression_beats_predicting_the_mean_by_far():
    """Side of a square: mean absolute error at most 60% of the predict-the-mean baseline."""
    task = get_task("regress", y_range=(0.0, 1.0))
    set_seed(0)
    train_loader, valid_loader = loaders(squares, 256, 64)
    config = RunConfig(
        task.name, "test_resnet", 1, 32, task_options=task.options, head_options={"dropout": 0.0}
    )
    learner = Learner(
        task.build_model(config), train_loader, valid_loader, task=task, config=config.to_dict()
    )
    learner.fit_one_cycle(5, 3e-3)
    _, train_targets = squares(256, seed=0)
    _, valid_targets = squares(64, seed=1)
    baseline = (valid_targets - train_targets.mean()).abs().mean().item()
    assert learner.history[-1]["mae"] <= 0.6 * baseline


def test_same_seed_gives_identical_metrics_twice():
    def history():
        learner = make_learner(get_task("classify"), shapes, 64, 32, 3, seed=7)
        learner.fit_one_cycle(1, 1e-2)
        weights = learner.model.head[-1].weight.detach().clone()
        return [{k: v for k, v in row.items() if k != "time"} for row in learner.history], weights

    first, first_weights = history()
    second, second_weights = history()
    assert first == second
    assert torch.equal(first_weights, second_weights)


def test_valley_rule_on_a_hand_made_curve():
    # A steadily falling curve of 10 points: the run spans it all and fastai's rule picks index
    # start + int(len / 3) + int(len / 6) with start = -1 → 3.
    losses = [10.0 - index for index in range(10)]
    assert valley(list(range(10)), losses) == 3
    # Down 5 → 1 over indices 2..6 after a bump; the longest decreasing run is 0, 2, 3, 4, 5, 6.
    losses = [6.0, 7.0, 5.0, 4.0, 3.0, 2.0, 1.0, 8.0, 9.0]
    # run length 6 ending at index 6, start 0 → 0 + int(2) + int(1) = 3
    assert valley(list(range(9)), losses) == 3


def test_lr_find_suggests_a_rate_and_leaves_the_model_untouched(tmp_path):
    learner = make_learner(get_task("classify"), shapes, 64, 32, 3)
    before = {k: v.clone() for k, v in learner.model.state_dict().items()}
    random_state = torch.get_rng_state()
    result = learner.lr_find(num_it=20, plot=tmp_path / "lr_find.png")
    assert 1e-7 <= result.suggestion <= 10
    assert len(result.lrs) == len(result.losses) <= 20
    assert result.lrs[0] == pytest.approx(1e-7)
    assert (tmp_path / "lr_find.png").stat().st_size > 1000
    after = learner.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(torch.get_rng_state(), random_state)


def test_get_preds_tta_and_predict_agree():
    learner = make_learner(get_task("classify"), shapes, 32, 16, 3)
    preds = learner.get_preds(with_loss=True)
    assert preds["activations"].shape == (16, 3) and preds["losses"].shape == (16,)
    assert torch.allclose(preds["activations"].sum(dim=1), torch.ones(16))
    images, _ = shapes(16, seed=1)
    plain = learner.model.eval()(images).softmax(dim=1)
    mirrored = learner.model(images.flip(-1)).softmax(dim=1)
    assert torch.allclose(learner.tta()["activations"], (plain + mirrored) / 2, atol=1e-5)
    records = learner.predict(images[:2])
    assert [r["prediction"] for r in records] == [str(int(i)) for i in plain[:2].argmax(1)]
    validated = learner.validate()
    assert validated["valid_loss"] == pytest.approx(preds["losses"].mean().item(), rel=1e-5)


def test_callbacks_log_stop_early_and_save_the_best(tmp_path):
    stream = io.StringIO()
    callbacks = [
        Progress(stream=stream),
        CSVLog(),
        SaveBest(),
        EarlyStopping(monitor="train_loss", patience=1, min_delta=100.0),
    ]
    learner = make_learner(
        get_task("classify"), shapes, 32, 16, 3, callbacks=callbacks, out=tmp_path / "run"
    )
    learner.fit(5, 1e-3)
    assert len(learner.history) == 2  # no improvement of 100 after the first epoch: stop
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("epoch 1/5  train_loss ") and "accuracy" in lines[0]
    csv_lines = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].startswith("epoch,train_loss,valid_loss,accuracy")
    assert len(csv_lines) == 3
    best = load(tmp_path / "run" / "best")
    assert best.config.backbone == "test_resnet"
    assert (tmp_path / "run" / "state.safetensors").exists()


def test_rich_progress_and_missing_tensorboard():
    stream = io.StringIO()
    learner = make_learner(
        get_task("classify"), shapes, 32, 16, 3, callbacks=[Progress(stream, rich_display=True)]
    )
    learner.fit(1, 1e-3)
    assert "epoch 1/1" in stream.getvalue() and "accuracy" in stream.getvalue()
    if not tensorboard_available():
        with pytest.raises(TorsoError, match="pip install tensorboard"):
            TensorBoard()
    else:
        assert TensorBoard() is not None


def test_learner_never_writes_into_its_config():
    task = get_task("classify")
    learner = make_learner(task, shapes, 32, 16, 3)
    learner.config = given = RunConfig(
        task="classify", backbone="test_resnet", num_outputs=3, size=32, classes=["a", "b", "c"]
    )
    copy = RunConfig.from_dict(given.to_dict())
    assert "accuracy" in learner.validate()
    assert learner.config == copy and learner.config is given
    learner.config = None  # no config at all: the number of outputs comes from the outputs
    assert "accuracy" in learner.validate()
    assert learner.config is None


def test_lr_find_shows_its_progress_unless_quiet():
    learner = make_learner(get_task("classify"), shapes, 64, 32, 3)
    stream = io.StringIO()
    result = learner.lr_find(num_it=20, stop_div=False, stream=stream)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("lr_find 2/20  lr ") and lines[-1].startswith("lr_find 20/20")
    assert len(result.lrs) == 20 and learner.history == [] and learner.epoch == 0
    quiet = io.StringIO()
    learner.lr_find(num_it=20, quiet=True, stream=quiet)
    assert quiet.getvalue() == ""


def test_lr_find_runs_on_the_learner_as_it_stands_and_fine_tuning_freezes_first():
    from torso.train.lr_find import find_learning_rate

    learner = make_learner(get_task("classify"), shapes, 64, 32, 3)
    head = len(learner.groups) - 1
    frozen_during = []
    run_finder = learner.lr_find

    def watched(**options):
        frozen_during.append(learner.frozen_to)
        return run_finder(**options)

    learner.lr_find = watched
    result = find_learning_rate(learner, fine_tune=True, num_it=10, quiet=True)
    assert result.suggestion > 0 and frozen_during == [head] and learner.frozen_to == 0
    find_learning_rate(learner, fine_tune=False, num_it=10, quiet=True)
    assert frozen_during == [head, 0] and learner.frozen_to == 0


def test_predictor_gives_what_the_learner_gives():
    from torso.predictor import Predictor

    learner = make_learner(get_task("classify"), shapes, 32, 16, 3)
    predictor = learner.predictor()
    assert isinstance(predictor, Predictor) and predictor.model is learner.model
    images, _ = shapes(4, seed=1)
    assert predictor.predict(images) == learner.predict(images)
    assert torch.equal(
        predictor.get_preds(learner.valid_loader)["activations"],
        learner.get_preds()["activations"],
    )
