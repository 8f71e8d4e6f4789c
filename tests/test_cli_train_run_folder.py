"""`torso train`'s run folder is protected: an existing run is refused unless `--resume` or
`--overwrite`, one process writes it at a time, a failed run leaves nothing that looks like a
run, `--resume` keeps the run's settings and clears what a killed process left behind, and
non-finite numbers stop the run with the last good model kept."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from test_learner_shapes import write_shape_folder

from torso.cli import main
from torso.config import RunConfig
from torso.errors import TorsoError
from torso.files import atomic_write
from torso.train.learner import Learner

TINY = ["--backbone", "test_resnet", "--size", "16", "--workers", "0", "--quiet"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_shape_folder(tmp_path_factory.mktemp("shapes"), per_class=6, size=16)


@pytest.fixture(scope="module")
def finished_run(data, tmp_path_factory):
    """A finished one-epoch run that kept its state (not to be changed by the tests that use
    it)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    arguments = ["train", str(data), *TINY, "--epochs", "1", "--out", str(run), "--keep-state"]
    assert main(arguments) == 0
    return run


def RunLock(folder):  # noqa: N802 (the class, imported when a test runs)
    from torso.train.run_folder import RunLock

    return RunLock(folder)


def run_cli(arguments, capsys):
    """(exit code, stderr lines) of `torso ...` in this process."""
    capsys.readouterr()
    try:
        code = main([str(argument) for argument in arguments])
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err.strip().splitlines()


def test_an_existing_run_is_refused_and_overwrite_replaces_it(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(data), *TINY, "--epochs", "1", "--out", str(run)]) == 0
    first = (run / "model.safetensors").read_bytes()
    code, error = run_cli(["train", data, *TINY, "--epochs", "1", "--out", run], capsys)
    assert code == 2 and len(error) == 1 and "holds a torso run already" in error[0]
    assert (run / "model.safetensors").read_bytes() == first  # untouched

    (run / "old_plot.png").write_bytes(b"a plot of an earlier run")
    (run / "notes.txt").write_text("the user's own file")
    arguments = ["train", data, *TINY, "--epochs", "1", "--seed", "1", "--out", run]
    assert run_cli([*arguments, "--overwrite"], capsys)[0] == 0
    assert not (run / "old_plot.png").exists()  # the old run's files went first
    assert (run / "notes.txt").read_text() == "the user's own file"
    assert (run / "model.safetensors").read_bytes() != first
    assert len((run / "metrics.csv").read_text().splitlines()) == 2


HOLD = """
import sys, time
from torso.train.run_folder import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(600)
"""


def test_a_second_writer_gets_the_holders_pid(data, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(  # another process holds the folder, as a `torso train` would
        [sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, error = run_cli(["train", data, *TINY, "--epochs", "1", "--out", run], capsys)
    finally:
        holder.kill()
        holder.wait(timeout=60)
    assert code == 2 and len(error) == 1
    assert f"in use by another torso process (pid {holder.pid})" in error[0]
    assert not (run / "model.safetensors").exists()
    # Once the holder is gone the folder is free (it holds no run yet).
    assert run_cli(["train", data, *TINY, "--epochs", "1", "--out", run], capsys)[0] == 0


def test_a_run_whose_loss_diverges_at_once_leaves_no_run_behind(data, tmp_path, capsys):
    run = tmp_path / "run"
    arguments = ["train", data, *TINY, "--epochs", "1", "--out", run]
    code, error = run_cli([*arguments, "--lr", "1e30", "--batch-size", "2"], capsys)
    assert code == 1 and len(error) == 1, error
    assert "became" in error[0] and "no epoch finished, so no model was saved" in error[0]
    for name in ["train_args.json", "state.safetensors", "model.safetensors", "torso.json"]:
        assert not (run / name).exists(), name
    assert run_cli(arguments, capsys)[0] == 0  # not a run: no --overwrite needed


def test_weights_that_become_nan_stop_the_run_and_keep_the_last_good_model(
    data, tmp_path, capsys, monkeypatch
):
    original = Learner._one_batch

    def poisoned(self, x, y):
        original(self, x, y)
        if self.epoch == 1 and self.batch_index + 1 == self.num_batches:
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("nan"))  # the loss stays finite

    monkeypatch.setattr(Learner, "_one_batch", poisoned)
    run = tmp_path / "run"
    code, error = run_cli(["train", data, *TINY, "--epochs", "3", "--out", run], capsys)
    assert code == 1 and len(error) == 1, error
    assert "NaN or infinite" in error[0] and "in epoch 2" in error[0]
    assert "the model of the last good epoch (1)" in error[0]
    saved = load_file(run / "model.safetensors")
    state = load_file(run / "state.safetensors")
    assert all(torch.isfinite(value).all() for value in saved.values())
    for name, value in saved.items():
        assert torch.equal(value, state[f"model.{name}"]), name
    assert len((run / "metrics.csv").read_text().splitlines()) == 2  # epoch 1 only


def test_a_learner_does_not_save_non_finite_weights(tmp_path):
    import torso
    from torso.tasks import get_task

    model = torso.create_model("test_resnet", num_outputs=2)
    config = RunConfig(task="classify", backbone="test_resnet", num_outputs=2, size=32)
    learner = Learner(model, task=get_task("classify"), config=config, device="cpu")
    with torch.no_grad():
        next(model.parameters())[0] = float("inf")
    with pytest.raises(TorsoError, match="NaN or infinite"):
        learner.save_model(tmp_path / "model")
    assert not (tmp_path / "model" / "model.safetensors").exists()
    with pytest.raises(TorsoError, match="weight_decay"):
        Learner(model, task=get_task("classify"), device="cpu", weight_decay=float("nan"))


SHARED = [  # options of both `torso train` and `torso lr-find`
    (["--valid-pct", "nan"], "--valid-pct: must be in [0, 1)"),
    (["--valid-pct", "1"], "--valid-pct: must be in [0, 1)"),
    (["--workers", "-2"], "--workers: must be 0 or more"),
    (["--batch-size", "0"], "--batch-size: must be at least 1"),
    (["--size", "1"], "--size: must be from 8 to 16384 pixels"),
    (["--size", "100000"], "--size: must be from 8 to 16384 pixels"),
    (["--size", "8000"], "--size 8000 with --batch-size 32 needs about"),
    (["--device", "banana"], "device 'banana' is not a device name"),
    (["--device", "cuda"], "CUDA is not available on this machine"),
]
TRAIN_ONLY = [
    (["--weight-decay", "nan"], "--weight-decay: must be a finite number"),
    (["--weight-decay", "-0.1"], "--weight-decay: must be a finite number"),
    (["--lr", "nan"], "--lr: must be greater than 0"),
    (["--lr", "inf"], "--lr: must be greater than 0"),
    (["--epochs", "0"], "--epochs: must be at least 1"),
    (["--freeze-epochs", "-1"], "--freeze-epochs: must be 0 or more"),
    (["--dist-timeout", "nan"], "--dist-timeout: must be greater than 0"),
]
LR_FIND_ONLY = [(["--num-it", "0"], "--num-it: must be at least 1")]


@pytest.mark.parametrize(
    "command, options, message",
    [("train", *case) for case in SHARED + TRAIN_ONLY]
    + [("lr-find", *case) for case in SHARED + LR_FIND_ONLY],
)
def test_bad_numbers_and_devices_are_one_line_and_exit_2(
    command, options, message, data, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a machine without
    out = tmp_path / ("run" if command == "train" else "lr.png")
    base = ["--backbone", "test_resnet", "--workers", "0", "--quiet", "--out", out]
    code, error = run_cli([command, data, *base, *options], capsys)
    assert code == 2 and len(error) == 1, error
    assert message in error[0]
    assert not (tmp_path / "run" / "train_args.json").exists()


def test_resume_refuses_other_epochs_lr_or_size(finished_run, data, capsys):
    before = (finished_run / "model.safetensors").read_bytes()
    for options, shown in [
        (["--epochs", "9"], "--epochs 9 (the run's: 1)"),
        (["--lr", "0.5"], "--lr 0.5 (the run's: None)"),
        (["--size", "24", "--epochs", "2"], "--size 24 (the run's: 16)"),
    ]:
        code, error = run_cli(["train", data, "--resume", finished_run, *options], capsys)
        assert code == 2 and len(error) == 1, error
        assert "cannot resume" in error[0] and shown in error[0]
        assert "keeps all its options but DATA, --quiet, --device, --workers" in error[0]
    assert (finished_run / "model.safetensors").read_bytes() == before


def test_resume_of_a_missing_folder_is_one_line(data, tmp_path, capsys):
    code, error = run_cli(["train", data, "--resume", tmp_path / "nothing"], capsys)
    assert code == 2
    assert error == [
        f"torso: error: cannot resume: run folder '{tmp_path / 'nothing'}' does not exist"
    ]


def test_resume_removes_a_killed_writers_temporary_files(data, tmp_path, capsys):
    run = tmp_path / "run"
    arguments = ["train", str(data), *TINY, "--epochs", "1", "--out", str(run), "--keep-state"]
    assert main(arguments) == 0
    left = [run / ".state.safetensors.k1ll3d_x.tmp", run / "best" / ".torso.json.abc123.tmp"]
    for path in left:
        path.write_bytes(b"half a file")
    (run / "keep.tmp").write_text("not torso's")
    with RunLock(run):  # while another process holds the run, nothing is removed
        assert run_cli(["train", data, "--resume", run, "--quiet"], capsys)[0] == 2
    assert all(path.exists() for path in left)
    assert run_cli(["train", data, "--resume", run, "--quiet"], capsys)[0] == 0
    assert not any(path.exists() for path in left)
    assert (run / "keep.tmp").exists()


def test_a_full_disk_names_the_folder_and_the_space_needed(tmp_path, monkeypatch):
    def full(descriptor):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(TorsoError) as raised:
        atomic_write(tmp_path / "model.safetensors", b"x" * 5_700_000)
    assert str(raised.value) == (
        f"the disk of '{tmp_path}' is full: writing 'model.safetensors' needs 5.7 MB free; "
        "make space there or choose another folder"
    )
    assert list(tmp_path.iterdir()) == []  # no temporary file left
