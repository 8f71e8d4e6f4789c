"""Data-parallel training under torchrun: 2 CPU processes with gloo on generated images.

* Two processes with batches of 4 train the same weights as one process with batches of 8, and
  measure the same validation metrics over a validation set of 7 images (4 + 3 per process: a
  padded duplicate would change both the loss and the accuracy, which is k/7). Only process 0
  writes. The model has no BatchNorm nor dropout (see `distributed_worker.tiny_model`): with
  them a process's share of a batch normalises or drops differently from the whole batch.
* An exception in one process ends both promptly, each with a message saying what happened.
* A process that stops answering is given up on after `--timeout` seconds, not waited on forever.
* `get_preds` under torchrun gathers both processes' shares back into the validation order.
* `torso train` under torchrun, SIGKILLed during training, resumes with `--resume` under torchrun;
  its metrics equal a single-process validation of the model it saved.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from distributed_worker import PER_PROCESS_BATCH, build_learner
from safetensors.torch import load_file
from test_learner_shapes import write_shape_folder

from torso import distributed
from torso.errors import TorsoError
from torso.train.callbacks.base import Callback
from torso.train.state import load_training_state

WORKER = Path(__file__).with_name("distributed_worker.py")
ENVIRONMENT = {**os.environ, "OMP_NUM_THREADS": "1"}
VALID_IMAGES = 7  # of 36 with valid_pct=0.2: 4 for process 0 and 3 for process 1


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_shape_folder(tmp_path_factory.mktemp("shapes"), per_class=12)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torchrun(*arguments: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        *arguments,
    ]


def launch(*arguments: str, timeout: float = 240) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    result = subprocess.run(
        torchrun(*arguments), env=ENVIRONMENT, capture_output=True, text=True, timeout=timeout
    )
    return result, time.monotonic() - started


def kill_workers_and_launcher(launcher: subprocess.Popen) -> None:
    """SIGKILL torchrun's workers (it starts each in a session of its own), then torchrun."""
    for children in Path(f"/proc/{launcher.pid}/task").glob("*/children"):
        for child in children.read_text().split():
            try:
                os.killpg(int(child), signal.SIGKILL)
            except ProcessLookupError:
                pass
    launcher.kill()


class WeightsAfterFirstEpoch(Callback):
    def after_epoch(self, learner):
        if learner.epoch == 0:
            self.weights = {k: v.clone() for k, v in learner.model.state_dict().items()}


def assert_same_weights(expected: dict, actual: dict, tolerance: float = 1e-5) -> None:
    assert expected.keys() == actual.keys()
    for name, tensor in expected.items():
        difference = (actual[name].double() - tensor.double()).abs().max().item()
        assert difference <= tolerance, f"{name}: {difference}"


def assert_same_row(expected: dict, actual: dict) -> None:
    assert float(actual["accuracy"]) == pytest.approx(expected["accuracy"], abs=1e-7)
    for key in ("train_loss", "valid_loss", "lr"):
        assert float(actual[key]) == pytest.approx(float(expected[key]), rel=1e-5), key


@pytest.fixture(scope="module")
def failed_run(data, tmp_path_factory):
    """Two epochs planned; process 1 raises as epoch 2 begins. Each process has a run folder
    of its own, so a file written by any process but the main one would show."""
    run = tmp_path_factory.mktemp("failed") / "run"
    result, seconds = launch(
        *(str(WORKER), str(data), str(run), str(run.parent / "results")),
        *("--epochs", "2", "--fail-epoch", "1", "--folder-per-process"),
    )
    return result, seconds, run


def test_two_processes_train_as_one_and_a_failing_process_stops_both(data, failed_run):
    """Epoch 1 as one process would; then both processes end because process 1 failed."""
    result, seconds, run = failed_run
    # Both processes ended, and promptly: the survivor noticed its peer was gone.
    assert result.returncode != 0
    assert seconds < 120
    assert "process 1 of 2 failed: RuntimeError: deliberate failure in epoch 2" in result.stderr
    assert "process 0 of 2 stopped: another process failed" in result.stderr

    # Only the main process wrote.
    assert not (run / "process-1").exists()
    written = run / "process-0"
    assert sorted(p.name for p in written.iterdir()) == ["best", "metrics.csv", "state.safetensors"]
    tensors, info = load_training_state(written / "state.safetensors")
    assert info["epoch"] == 1

    # One process, batches of 8 (2 x 4), same seed: the same weights and numbers after epoch 1.
    capture = WeightsAfterFirstEpoch()
    single = build_learner(str(data), 2 * PER_PROCESS_BATCH, None, callbacks=[capture])
    assert len(single.valid_loader.dataset) == VALID_IMAGES
    single.fit_one_cycle(2, 3e-3)
    trained = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    assert_same_weights(capture.weights, trained)
    assert_same_weights(capture.weights, load_file(written / "best" / "model.safetensors"))
    (row,) = csv.DictReader((written / "metrics.csv").open())
    assert_same_row(single.history[0], row)


def test_a_failed_run_resumes_under_torchrun_to_the_single_process_weights(
    data, failed_run, tmp_path
):
    """The failed run's folder, resumed by both processes, ends where one process ends."""
    run, results = tmp_path / "run", tmp_path / "results"
    shutil.copytree(failed_run[2] / "process-0", run)
    resumed, _ = launch(str(WORKER), str(data), str(run), str(results), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    single = build_learner(str(data), 2 * PER_PROCESS_BATCH, None)
    single.fit_one_cycle(2, 3e-3)
    assert_same_weights(single.model.state_dict(), load_file(run / "model.safetensors"))
    # Both processes hold the same history, equal to the single process's, and the same
    # predictions, gathered from both processes' shares into the validation set's order.
    expected = single.get_preds(with_loss=True)
    assert len(expected["targets"]) == VALID_IMAGES
    for rank in (0, 1):
        history = json.loads((results / f"history-{rank}.json").read_text())
        assert len(history) == 2
        for expected_row, row in zip(single.history, history, strict=True):
            assert_same_row(expected_row, row)
        predictions = load_file(results / f"predictions-{rank}.safetensors")
        assert torch.equal(predictions["targets"], expected["targets"])
        for key in ("activations", "losses"):
            assert torch.allclose(predictions[key], expected[key], atol=1e-5, rtol=0), key


def test_a_process_that_stops_answering_is_given_up_after_the_timeout(data, tmp_path):
    result, seconds = launch(
        str(WORKER),
        str(data),
        str(tmp_path / "run"),
        str(tmp_path / "results"),
        "--epochs",
        "2",
        "--stall-epoch",
        "1",
        "--timeout",
        "5",
    )
    assert result.returncode != 0
    assert "process 0 of 2 stopped: another process failed or did not answer within 5 s" in (
        result.stderr
    )
    assert seconds < 120  # process 1 sleeps for 600 s: nobody waited for it


def test_torso_train_under_torchrun_resumes_after_sigkill(data, tmp_path):
    run = tmp_path / "run"
    command = torchrun(
        *("-m", "torso", "train", str(data), "--backbone", "test_resnet", "--size", "32"),
        *("--workers", "0", "--batch-size", "4", "--epochs", "3", "--seed", "3"),
        *("--out", str(run)),
    )
    process = subprocess.Popen(
        command, env=ENVIRONMENT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    state = run / "state.safetensors"
    deadline = time.monotonic() + 240
    while not state.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    kill_workers_and_launcher(process)
    output = process.communicate(timeout=60)[0].decode()
    assert process.returncode != 0, output[-3000:]
    assert not (run / "model.safetensors").exists()
    _, info = load_training_state(state)
    before = list(csv.DictReader((run / "metrics.csv").open()))
    assert 1 <= info["epoch"] == len(before) < 3

    resumed = subprocess.run(
        torchrun("-m", "torso", "train", str(data), "--resume", str(run), "--quiet"),
        env=ENVIRONMENT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count("saved model to") == 1  # printed by the main process only
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [row["epoch"] for row in rows] == ["1", "2", "3"]
    assert rows[: len(before)] == before

    # The last epoch's metrics are those of the saved model over the whole validation set.
    from torso.data import load_data
    from torso.predictor import load
    from torso.train.learner import Learner

    saved = load(run)  # a Predictor: the Learner measures loss and metrics
    learner = Learner(saved.model, task=saved.task, config=saved.config.to_dict(), device="cpu")
    valid = load_data(data, size=32, batch_size=4, num_workers=0, seed=3).valid
    assert len(valid.dataset) == VALID_IMAGES
    measured = learner.validate(valid)
    assert float(rows[-1]["valid_loss"]) == pytest.approx(measured["valid_loss"], rel=1e-5)
    assert float(rows[-1]["accuracy"]) == pytest.approx(measured["accuracy"], abs=1e-7)


def test_shard_sampler_shares():
    """Training shares are equal and drop the tail; validation shares repeat nothing."""
    order = list(range(7))
    train = [distributed.ShardSampler(order, rank=r, world_size=2) for r in (0, 1)]
    assert [list(share) for share in train] == [[0, 2, 4], [1, 3, 5]]
    assert [len(share) for share in train] == [3, 3]
    valid = [distributed.ShardSampler(order, rank=r, world_size=2, even=False) for r in (0, 1)]
    assert [list(share) for share in valid] == [[0, 2, 4, 6], [1, 3, 5]]
    assert [len(share) for share in valid] == [4, 3]
    with pytest.raises(TorsoError, match="rank 2"):
        distributed.ShardSampler(order, rank=2, world_size=2)


def test_outside_torchrun_nothing_is_distributed(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert distributed.setup(None).type == expected
    assert (distributed.rank(), distributed.world_size(), distributed.is_main_process()) == (
        0,
        1,
        True,
    )
    assert distributed.sum_across([1.5, 2]) == [1.5, 2.0]
    assert distributed.broadcast_from_main("x") == "x"
    with pytest.raises(TorsoError, match="timeout"):
        distributed.setup(None, timeout=0)


def test_loaders_without_a_share_per_process_are_refused(monkeypatch):
    from torch.utils.data import DataLoader, DistributedSampler, SequentialSampler, TensorDataset

    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    dataset = TensorDataset(torch.zeros(5))
    check = distributed.check_loader_is_sharded
    with pytest.raises(TorsoError, match="shard_samplers"):
        check(DataLoader(dataset), "training")
    padded = DataLoader(dataset, sampler=DistributedSampler(dataset, num_replicas=2, rank=0))
    check(padded, "training")
    with pytest.raises(TorsoError, match="repeats images"):
        check(padded, "validation")
    dropping = distributed.ShardSampler(SequentialSampler(dataset), rank=0, world_size=2)
    with pytest.raises(TorsoError, match="even=False"):
        check(DataLoader(dataset, sampler=dropping), "validation")
    whole = distributed.ShardSampler(SequentialSampler(dataset), rank=0, world_size=2, even=False)
    check(DataLoader(dataset, sampler=whole), "validation")
    check(None, "validation")


def test_sync_batchnorm_on_cpus_is_refused_with_a_reason(monkeypatch):
    from torso import create_model
    from torso.tasks import get_task
    from torso.train.learner import Learner

    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    model = create_model("test_resnet", 2)
    with pytest.raises(TorsoError, match="SyncBatchNorm does not run on CPUs"):
        Learner(model, task=get_task("classify"), device="cpu", sync_batchnorm=True)


def test_peer_failure_is_detected_by_exception_type_not_message():
    """A broken process group is known by the exception's type, whatever its message says."""
    import torch.distributed as dist

    assert distributed.is_peer_failure(dist.DistBackendError("NCCL communicator was aborted"))
    assert distributed.is_peer_failure(dist.DistStoreError("wait timeout"))
    # A bug whose message happens to mention gloo or a timeout is not a peer's failure ...
    assert not distributed.is_peer_failure(RuntimeError("gloo: connection closed, timed out"))
    assert not distributed.is_peer_failure(ValueError("nccl"))
    # ... but gloo's plain RuntimeError from inside an exchange is.
    with pytest.raises(distributed.CollectiveError) as caught:
        with distributed.collective():
            raise RuntimeError("[pair.cc:561] Connection closed by peer")
    assert distributed.is_peer_failure(caught.value)
    for error in (torch.OutOfMemoryError("out of memory"), TorsoError("bad file")):
        with pytest.raises(type(error)):
            with distributed.collective():
                raise error


def test_lr_find_under_torchrun_keeps_the_processes_in_step(data, tmp_path):
    """Both processes record the same curve (the loss is averaged over them), so they stop at
    the same batch and suggest the same rate."""
    results = tmp_path / "results"
    result, _ = launch(
        *(str(WORKER), str(data), str(tmp_path / "run"), str(results)),
        *("--epochs", "0", "--lr-find"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    curves = [json.loads((results / f"lr_find-{rank}.json").read_text()) for rank in (0, 1)]
    assert curves[0] == curves[1]
    assert 2 <= len(curves[0]["losses"]) <= 12


def test_leaving_the_group_after_an_error_does_not_hide_a_bug(monkeypatch):
    """`abort()` ignores the group's own failure to close (it is leaving after an error), but
    not a bug: that surfaces as itself."""
    import torch.distributed as dist

    monkeypatch.setattr(dist, "is_initialized", lambda: True)

    def bug():
        raise TypeError("a bug")

    monkeypatch.setattr(dist, "get_backend", bug)
    with pytest.raises(TypeError, match="a bug"):
        distributed.abort()

    def closed():
        raise RuntimeError("[pair.cc:561] Connection closed by peer")

    monkeypatch.setattr(dist, "get_backend", lambda: "gloo")
    monkeypatch.setattr(dist, "destroy_process_group", closed)
    distributed.abort()  # nothing raised
