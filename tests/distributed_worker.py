"""What each process runs in tests/test_distributed.py, started by torchrun (2 CPU processes).

    python -m torch.distributed.run --nproc-per-node 2 ... tests/distributed_worker.py \\
        DATA RUN RESULTS [--epochs N] [--folder-per-process] [--resume] [--lr-find]
        [--fail-epoch E] [--stall-epoch E] [--timeout SECONDS]

Trains `tiny_model()` with the Python API on DATA (each process takes a per-process batch of
`PER_PROCESS_BATCH`) and writes this process's history and validation predictions to
RESULTS/history-<rank>.json and RESULTS/predictions-<rank>.safetensors. The
failure options make process 1 raise (or hang) when epoch E begins, for the failure tests.
`--lr-find` first runs the learning-rate finder and writes its curve to RESULTS/lr_find-<rank>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from torso import create_model, distributed
from torso.data import load_data
from torso.tasks import get_task
from torso.train.learner import Learner, set_seed

PER_PROCESS_BATCH = 4
SEED = 5


def tiny_model(num_outputs: int) -> torch.nn.Module:
    """A body and head without BatchNorm or dropout (test_convnext has LayerNorms only; the head
    is pooling and one Linear): their outputs do not depend on what else is in the batch, nor on
    random numbers, so the processes' shares add up exactly to a single process's batch."""
    return create_model(
        "test_convnext", num_outputs, hidden=[], first_bn=False, dropout=0.0, concat_pool=False
    )


def data(path: str, batch_size: int, **samplers):
    return load_data(
        path, size=32, batch_size=batch_size, num_workers=0, seed=SEED, valid_pct=0.2, **samplers
    )


def build_learner(
    path: str, batch_size: int, out: Path | None, callbacks=(), **samplers
) -> Learner:
    """The same Learner for one process (no samplers) and for each of several processes."""
    from torso.train.callbacks import CSVLog, SaveBest

    set_seed(SEED)
    dls = data(path, batch_size, **samplers)
    return Learner(
        tiny_model(dls.num_outputs),
        dls.train,
        dls.valid,
        task=get_task("classify"),
        config={
            "task": "classify",
            "backbone": "test_convnext",
            "num_outputs": dls.num_outputs,
            "size": dls.size,
        },
        callbacks=[CSVLog(), SaveBest(), *callbacks],
        out=out,
        # the layout of a torchrun launch in the single process too (alone, a CPU Learner would
        # measure which is faster, and timings differ between runs)
        channels_last=True,
    )


class ProcessOneTrips:
    """A training loader that, in process 1 only, raises or hangs when epoch `epoch` begins."""

    def __init__(self, loader, epoch: int, stall: bool) -> None:
        self.loader, self.epoch, self.stall = loader, epoch, stall
        self.sampler = loader.sampler
        self.next_epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.next_epoch = epoch
        self.loader.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        if distributed.rank() == 1 and self.next_epoch == self.epoch:
            if self.stall:
                time.sleep(600)
            raise RuntimeError(f"deliberate failure in epoch {self.epoch + 1}")
        return iter(self.loader)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("run", type=Path)
    parser.add_argument("results", type=Path)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--folder-per-process", action="store_true")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--lr-find", action="store_true")
    parser.add_argument("--fail-epoch", type=int)
    parser.add_argument("--stall-epoch", type=int)
    parser.add_argument("--timeout", type=float, default=distributed.DEFAULT_TIMEOUT)
    args = parser.parse_args()
    torch.set_num_threads(1)

    distributed.setup("cpu", timeout=args.timeout)
    rank = distributed.rank()
    # With a folder per process, a file written by any process but the main one would show.
    out = args.run / f"process-{rank}" if args.folder_per_process else args.run
    with distributed.failure_guard():
        learner = build_learner(
            args.data, PER_PROCESS_BATCH, out, **distributed.shard_samplers(SEED)
        )
        trip = args.fail_epoch if args.fail_epoch is not None else args.stall_epoch
        if trip is not None:
            learner.train_loader = ProcessOneTrips(
                learner.train_loader, trip, stall=args.stall_epoch is not None
            )
        if args.lr_find:
            found = learner.lr_find(num_it=12, quiet=True)
            args.results.mkdir(parents=True, exist_ok=True)
            curve = {"lrs": found.lrs, "losses": found.losses, "suggestion": found.suggestion}
            (args.results / f"lr_find-{rank}.json").write_text(json.dumps(curve))
        if args.resume:
            learner.resume()
        else:
            learner.fit_one_cycle(args.epochs, 3e-3)
        learner.save_model(out)
        predictions = learner.get_preds(with_loss=True)  # gathered from both processes
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"history-{rank}.json").write_text(json.dumps(learner.history))
    save_file(predictions, args.results / f"predictions-{rank}.safetensors")


if __name__ == "__main__":
    try:
        main()
    except distributed.PeerFailure as error:
        print(f"torso: error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
