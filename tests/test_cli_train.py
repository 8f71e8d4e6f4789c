"""`torso train`, `torso predict`, `torso lr-find` end to end on generated image folders; bad input;
a run killed with SIGKILL and resumed ends where an uninterrupted run ends."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from test_learner_shapes import write_shape_folder

from torso.cli import main
from torso.train.state import load_training_state

TINY = ["--backbone", "test_resnet", "--size", "32", "--workers", "0", "--quiet"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_shape_folder(tmp_path_factory.mktemp("shapes"), per_class=12)


def test_train_predict_and_lr_find(data, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(
        ["train", str(data), *TINY, "--batch-size", "8", "--epochs", "2", "--out", str(run)]
    )
    assert code == 0
    for name in [
        "model.safetensors",
        "torso.json",
        "metrics.csv",
        "report.html",
        "losses.png",
        "confusion_matrix.png",
        "top_losses.png",
        "best/torso.json",
    ]:
        assert (run / name).is_file(), name
    assert not (run / "state.safetensors").exists()  # a completed run drops its training state
    assert len((run / "metrics.csv").read_text().splitlines()) == 3
    report = (run / "report.html").read_text()
    assert report.count("<img") >= 3 and "test_resnet" in report

    predictions = tmp_path / "preds.csv"
    code = main(["predict", str(run), str(data / "circle"), "--out", str(predictions), "--tta"])
    assert code == 0
    rows = list(csv.DictReader(predictions.open()))
    assert len(rows) == 12 and list(rows[0])[:3] == ["path", "prediction", "probability"]
    assert list(rows[0])[3:] == ["p_circle", "p_square", "p_triangle"]
    assert {row["prediction"] for row in rows} <= {"circle", "square", "triangle"}

    plot = tmp_path / "lr.png"
    capsys.readouterr()
    code = main(
        ["lr-find", str(data), *TINY, "--batch-size", "8", "--num-it", "12", "--out", str(plot)]
    )
    assert code == 0 and plot.stat().st_size > 1000
    assert "suggested learning rate" in capsys.readouterr().out


def run_cli(arguments):
    """(exit code, stderr) of `torso ...` in this process."""
    try:
        return main(arguments)
    except SystemExit as exit_:  # argparse errors
        return exit_.code


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["train", "{missing}"], "does not exist"),
        (["train", "{data}", "--backbone", "resnet_nonexistent"], "unknown backbone"),
        (["train", "{data}", "--lr", "0"], "--lr"),
        (["train", "{data}", "--lr", "-0.1"], "--lr"),
        (["train", "{data}", "--batch-size", "0"], "--batch-size"),
        (["train", "{data}", "--out", "{blocked}/run"], "cannot write to output folder"),
        (["train", "{data}", "--resume", "{tmp}"], "not a torso run folder"),
        (["predict", "{tmp}", "{data}"], "not a torso model"),
        (["lr-find", "{missing}"], "does not exist"),
    ],
)
def test_bad_input_prints_one_line_and_exits_2(arguments, message, data, tmp_path, capsys):
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    values = {"missing": tmp_path / "missing", "data": data, "blocked": blocked, "tmp": tmp_path}
    arguments = [argument.format(**values) for argument in arguments]
    code = run_cli([*arguments, "--size", "32"] if arguments[0] != "predict" else arguments)
    error = capsys.readouterr().err
    assert code == 2
    assert len(error.strip().splitlines()) == 1, error
    assert message in error and "Traceback" not in error


def test_bad_input_in_a_real_process_has_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "torso", "train", str(tmp_path / "nothing-here")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"torso: error: data folder '{tmp_path / 'nothing-here'}' does not exist"
    ]


def test_sigkilled_run_resumes_to_the_same_weights(data, tmp_path):
    """Fine-tuning (1 frozen + 2 unfrozen epochs), killed during epoch 2, then resumed."""
    weights = tmp_path / "pretrained.safetensors"
    torch.manual_seed(0)
    save_file(
        {k: v.contiguous() for k, v in timm.create_model("test_resnet").state_dict().items()},
        weights,
    )
    common = [
        str(data),
        *TINY,
        "--batch-size",
        "4",
        "--epochs",
        "2",
        "--seed",
        "3",
        "--weights",
        str(weights),
        "--threads",  # the same in every process: another thread count sums in another order
        "1",
        "--channels-last",  # likewise the layout, which "auto" would measure in each process
        "off",
    ]

    whole = tmp_path / "whole"
    assert main(["train", *common, "--out", str(whole)]) == 0

    killed = tmp_path / "killed"
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "torso", "train", *common, "--out", str(killed)],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    state = killed / "state.safetensors"
    deadline = time.monotonic() + 300
    while not state.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, process.stderr.read()
    _, info = load_training_state(state)
    assert info["epoch"] == 1  # killed during the second of three epochs
    assert not (killed / "model.safetensors").exists()

    assert main(["train", str(data), "--resume", str(killed), "--quiet"]) == 0
    expected, resumed = (
        load_file(whole / "model.safetensors"),
        load_file(killed / "model.safetensors"),
    )
    assert expected.keys() == resumed.keys()
    for name, tensor in expected.items():
        assert torch.allclose(resumed[name].double(), tensor.double(), atol=1e-6, rtol=0), name

    def rows(folder):
        return [
            {k: v for k, v in row.items() if k != "time"}
            for row in csv.DictReader((folder / "metrics.csv").open())
        ]

    assert len(rows(whole)) == 3 and rows(killed) == rows(whole)


def test_compute_threads_leave_the_loader_workers_their_cores(monkeypatch):
    import os

    import torch

    from torso.cli.train import set_compute_threads

    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    try:
        assert set_compute_threads(None, 2) == 6 == torch.get_num_threads()
        assert set_compute_threads(None, 8) == 1  # never fewer than one
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two torchrun processes on this machine
        assert set_compute_threads(None, 2) == 2
        assert set_compute_threads(3, 2) == 3  # --threads wins
    finally:
        torch.set_num_threads(before)


def test_resume_without_out_is_a_one_line_error(data, capsys):
    """`torso train DATA --resume` with no run folder: one line naming the fix, exit 2."""
    assert run_cli(["train", str(data), "--resume", *TINY]) == 2
    error = capsys.readouterr().err
    assert error.strip().splitlines() == [
        "torso: error: --resume needs the run folder: --resume RUN or --out RUN"
    ]


def test_train_lr_find_freezes_the_body_when_fine_tuning(data, tmp_path, monkeypatch):
    """`torso train --lr-find --pretrained` finds the rate for the first (frozen) step, as
    `torso lr-find --pretrained` does."""
    from torso.train.learner import Learner

    class Found(Exception):
        pass

    seen = {}

    def record(learner, **options):
        seen["frozen_to"] = learner.frozen_to
        seen["groups"] = len(learner.groups)
        raise Found

    monkeypatch.setattr(Learner, "lr_find", record)
    weights = tmp_path / "pretrained.safetensors"
    save_file(
        {k: v.contiguous() for k, v in timm.create_model("test_resnet").state_dict().items()},
        weights,
    )
    arguments = ["train", str(data), *TINY, "--weights", str(weights), "--lr-find"]
    with pytest.raises(Found):
        main([*arguments, "--out", str(tmp_path / "run")])
    assert seen["frozen_to"] == seen["groups"] - 1  # only the head trains
