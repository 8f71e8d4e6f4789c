"""Data-parallel training over several processes, as `torchrun` starts them.

`torchrun --nproc-per-node N -m torso train ...` (or a script that builds a `Learner`) starts N
processes and tells each its place in environment variables (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`,
`MASTER_ADDR`, `MASTER_PORT`). This module turns them into a PyTorch process group and gives the
rest of torso a few plain answers and operations:

* `setup(device, timeout=...)` joins the group (NCCL on GPUs, gloo on CPUs) and returns this
  process's device (`cuda:<LOCAL_RANK>` on GPUs); without torchrun's variables it does nothing;
* `rank()`, `world_size()`, `is_main_process()`, `is_distributed()`;
* `ShardSampler` gives each process its share of an epoch: the training share drops the last few
  samples (fewer than the number of processes) so every process takes the same number of steps,
  the validation share drops nothing and repeats nothing, so a metric gathered over the shares
  counts every validation image exactly once;
* `sum_across`, `broadcast_from_main`, `gather_tensors`, `gather_in_order`,
  `gather_objects_in_order`, `broadcast_buffers`, `measured_together` for the Learner and the
  Predictor;
* `cleanup()` destroys the group on exit, `abort()` on an error, and `failure_guard()` turns a
  peer that died or stopped answering (a collective that timed out after `timeout` seconds) into
  a `PeerFailure` naming this process, so no process waits forever. A broken group is known by
  the exception's type: `torch.distributed.DistError`, or `CollectiveError` from a block run in
  `collective()` (every exchange torso makes, DDP's included).

Each process takes batches of the loader's `batch_size`: the global batch is `batch_size x
world_size()`. With the samplers from `shard_samplers(seed)` the global batches of an epoch hold
the same images as a single process's batches of that global size, in the same order.
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

from torso.errors import TorsoError

DEFAULT_TIMEOUT = 600.0  # seconds a collective may wait for the slowest process
_ENVIRONMENT = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
_timeout_seconds = DEFAULT_TIMEOUT


class PeerFailure(TorsoError):
    """Another process of the run failed or stopped answering, so this one stopped too."""

    exit_code = 1


# -- where this process stands -----------------------------------------------------------------
def launched_by_torchrun() -> bool:
    """Whether torchrun (or an equivalent launcher) set this process's rendezvous variables."""
    return all(name in os.environ for name in _ENVIRONMENT)


def is_distributed() -> bool:
    """Whether this process belongs to an initialised process group of two or more."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's number, 0 ... world_size() - 1 (0 when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", 0)) if launched_by_torchrun() else 0


def world_size() -> int:
    """How many processes train together (1 when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", 1)) if launched_by_torchrun() else 1


def local_rank() -> int:
    """This process's number on its machine (its GPU index under torchrun)."""
    return int(os.environ.get("LOCAL_RANK", 0)) if launched_by_torchrun() else 0


def is_main_process() -> bool:
    """True in the one process that writes files, shows progress and saves checkpoints."""
    return rank() == 0


def _place() -> tuple[int, int]:
    return rank(), world_size()


def describe() -> str:
    """`"process 1 of 2"`, for messages."""
    return f"process {rank()} of {world_size()}"


# -- the process group -------------------------------------------------------------------------
def setup(
    device: str | torch.device | None = None, *, timeout: float = DEFAULT_TIMEOUT
) -> torch.device:
    """Join the process group that torchrun describes and return this process's device.

    `device`: None chooses `cuda:<LOCAL_RANK>` when CUDA is available, else the CPU; `"cuda"`
    without an index becomes `cuda:<LOCAL_RANK>`. The backend is NCCL for CUDA devices, gloo for
    the CPU. `timeout`: seconds any collective (a gradient all-reduce, a broadcast) waits for
    the other processes before it fails, which bounds how long a dead or stuck peer can hold
    up the others. Without torchrun's variables, or when the group exists already, it only
    resolves the device. The group is destroyed when the interpreter exits (`cleanup`).
    """
    global _timeout_seconds
    if timeout <= 0:
        raise TorsoError(f"the distributed timeout must be more than 0 seconds, got {timeout}")
    chosen = check_device(device)
    if not launched_by_torchrun():
        return chosen
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise TorsoError(f"device '{device}': CUDA is not available in {describe()}")
        if chosen.index is None:
            chosen = torch.device("cuda", local_rank())
        if chosen.index >= torch.cuda.device_count():
            raise TorsoError(
                f"{describe()} wants GPU {chosen.index} but this machine has "
                f"{torch.cuda.device_count()}: start at most that many processes per node"
            )
        torch.cuda.set_device(chosen)
    if dist.is_initialized():
        return chosen
    backend = "nccl" if chosen.type == "cuda" else "gloo"
    options: dict[str, Any] = {"timeout": timedelta(seconds=timeout)}
    if backend == "nccl":
        options["device_id"] = chosen
    try:
        dist.init_process_group(backend, **options)
    except (RuntimeError, ValueError) as error:
        raise PeerFailure(
            f"{describe()} could not join the other processes at "
            f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}: "
            f"{_first_line(error)}"
        ) from None
    _timeout_seconds = float(timeout)
    atexit.register(cleanup)
    return chosen


def check_device(device: str | torch.device | None) -> torch.device:
    """`device` as a `torch.device` (None: CUDA when available, else the CPU); an unknown name
    or a GPU this machine does not have is a `TorsoError` naming it."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError):
        raise TorsoError(
            f"device '{device}' is not a device name: use cpu, cuda, cuda:1, mps ..."
        ) from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise TorsoError(
            f"device '{device}': CUDA is not available on this machine (no GPU, or torch was "
            "built without CUDA); use --device cpu"
        )
    if chosen.type == "cuda" and chosen.index is not None and not launched_by_torchrun():
        if chosen.index >= torch.cuda.device_count():
            raise TorsoError(
                f"device '{device}': this machine has {torch.cuda.device_count()} GPU(s)"
            )
    if chosen.type == "mps" and not torch.backends.mps.is_available():
        raise TorsoError(f"device '{device}': Apple's MPS is not available on this machine")
    return chosen


def cleanup() -> None:
    """Destroy the process group (nothing to do when there is none)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def abort() -> None:
    """Leave the process group at once after an error, without waiting for the others.

    NCCL's communicators are aborted (a plain destroy could wait on a collective that will never
    finish); gloo's are simply destroyed, which closes their connections.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        abort_group = getattr(dist.distributed_c10d, "_abort_process_group", None)
        if dist.get_backend() == "nccl" and abort_group is not None:
            abort_group()
        else:
            dist.destroy_process_group()
    except (RuntimeError, ValueError):  # leaving after an error: the first error is what matters
        pass


@contextmanager
def failure_guard() -> Iterator[None]:
    """Run a block of distributed work so that a failure ends this process promptly and clearly.

    On any error the process group is aborted. A `TorsoError` gets this process's place in front
    of its message. A failed collective (a peer died, or did not answer within the timeout)
    becomes a `PeerFailure`. Other errors (a bug) are re-raised as they are, after one line on
    stderr saying which process failed.
    """
    try:
        yield
    except TorsoError as error:
        if not is_distributed():
            raise
        error.args = (f"{describe()}: {error}", *error.args[1:])
        abort()
        raise
    except KeyboardInterrupt:
        abort()
        raise
    except Exception as error:
        if not is_distributed():
            raise
        place = describe()
        abort()
        if is_peer_failure(error):
            raise PeerFailure(
                f"{place} stopped: another process failed or did not answer within "
                f"{_timeout_seconds:g} s ({_first_line(error)})"
            ) from None
        print(f"torso: {place} failed: {type(error).__name__}: {error}", file=sys.stderr)
        raise


class CollectiveError(RuntimeError):
    """A collective operation (an all-reduce, a broadcast, DDP's gradient exchange) failed:
    gloo reports a dead or silent peer as a plain `RuntimeError`, which `collective()` turns
    into this type so that the cause is known by type, not by reading the message."""


def is_peer_failure(error: BaseException) -> bool:
    """Whether `error` means that the process group broke (a peer died or timed out): a
    `torch.distributed.DistError` (NCCL, the rendezvous store) or a `CollectiveError`."""
    return isinstance(error, dist.DistError | CollectiveError)


@contextmanager
def collective() -> Iterator[None]:
    """Run a block that exchanges data with the other processes; the `RuntimeError` by which
    gloo reports a broken group becomes a `CollectiveError`. Running out of memory stays what
    it is, and so does an error that is already typed (`DistError`, `TorsoError`)."""
    try:
        yield
    except (torch.OutOfMemoryError, dist.DistError, TorsoError, CollectiveError):
        raise
    except RuntimeError as error:
        raise CollectiveError(str(error)) from error


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


# -- collectives the Learner needs --------------------------------------------------------------
def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def sum_across(values: Sequence[float]) -> list[float]:
    """The sums of `values` over all processes (the values themselves when not distributed)."""
    if not is_distributed():
        return [float(value) for value in values]
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64)
    tensor = tensor.to(_collective_device())
    with collective():
        dist.all_reduce(tensor)
    return tensor.cpu().tolist()


def broadcast_from_main(value: Any) -> Any:
    """The main process's `value` (a picklable object made by torso itself) in every process."""
    if not is_distributed():
        return value
    box = [value]
    with collective():
        dist.broadcast_object_list(box, src=0, device=_collective_device())
    return box[0]


def gather_tensors(tensor: torch.Tensor) -> torch.Tensor:
    """Every process's `tensor` (N_r, ...) concatenated along dim 0 in rank order, in each process.

    The N_r may differ (validation shares of uneven size): each share is padded to the longest
    for the exchange and the padding is cut off again, so nothing is counted twice.
    """
    if not is_distributed():
        return tensor
    device = _collective_device()
    local = tensor.to(device).contiguous()
    length = torch.tensor([local.shape[0]], device=device)
    lengths = [torch.zeros_like(length) for _ in range(world_size())]
    with collective():
        dist.all_gather(lengths, length)
    longest = int(max(int(n) for n in lengths))
    padded = local.new_zeros((longest, *local.shape[1:]))
    padded[: local.shape[0]] = local
    pieces = [torch.zeros_like(padded) for _ in range(world_size())]
    with collective():
        dist.all_gather(pieces, padded)
    return torch.cat([piece[: int(n)] for piece, n in zip(pieces, lengths, strict=True)]).to(
        tensor.device
    )


def gather_in_order(share: torch.Tensor) -> torch.Tensor:
    """Rows measured over a loader dealt out by `ShardSampler(..., even=False)`: this process's
    `share` (N_r, ...) in, all N rows out (N, ...), in the order of the sampler they were dealt
    from (process r holds positions r, r + W, ...), in every process."""
    gathered = gather_tensors(share)
    if not is_distributed():
        return gathered
    count = world_size()
    positions = torch.cat([torch.arange(r, len(gathered), count) for r in range(count)])
    ordered = torch.empty_like(gathered)
    ordered[positions.to(gathered.device)] = gathered
    return ordered


def gather_objects_in_order(share: list[Any]) -> list[Any]:
    """`gather_in_order` for per-sample objects that are not rows of one tensor (a detection
    target: a dict of a variable number of boxes and labels): this process's `share` in, every
    process's items out, in the order of the sampler they were dealt from, in every process.
    Each item is pickled whole (`all_gather_object`); tensors in it should be on the CPU."""
    if not is_distributed():
        return list(share)
    pieces: list[Any] = [None] * world_size()
    with collective():
        dist.all_gather_object(pieces, list(share))
    ordered: list[Any] = [None] * sum(len(piece) for piece in pieces)
    for position, piece in enumerate(pieces):
        ordered[position :: world_size()] = piece
    return ordered


def broadcast_buffers(model: nn.Module) -> None:
    """Copy the main process's buffers (BatchNorm running statistics, ...) into every process,
    so that validation and the saved checkpoint see the same model everywhere."""
    if not is_distributed():
        return
    device = _collective_device()
    with collective():
        for buffer in model.buffers():
            if buffer.device == device:
                dist.broadcast(buffer, src=0)
            else:
                moved = buffer.to(device)
                dist.broadcast(moved, src=0)
                buffer.copy_(moved)


def measured_together(loader: Any, model: nn.Module) -> bool:
    """Whether all processes measure `loader` together, each its own share (a `ShardSampler`):
    a collective call then, which every process must make. When they do, every process first
    takes the main process's buffers (BatchNorm statistics), so all measure the same model, and a
    share left empty (more processes than validation images) is a `TorsoError`."""
    shared = is_distributed() and isinstance(getattr(loader, "sampler", None), ShardSampler)
    if shared:
        broadcast_buffers(model)
        shares = gather_tensors(torch.tensor([len(loader)]))
        if int(shares.min()) == 0:
            raise TorsoError(
                f"the validation set is too small for {world_size()} processes: "
                "each needs at least one validation image"
            )
    return shared


# -- each process's share of the data ------------------------------------------------------------
class ShardSampler(Sampler[int]):
    """Process `rank`'s share of the order that `sampler` gives: positions rank, rank + W, ...

    `even=True` (training) first drops the last `len % W` positions of the order, so every
    process gets the same number of samples and takes the same number of steps; with the order
    reshuffled every epoch, different samples are dropped each time. `even=False` (validation)
    drops nothing: shares differ in length by at most one and no sample appears twice. The
    epoch is passed on to `sampler.set_epoch` when it has one.
    """

    def __init__(
        self,
        sampler: Sampler[int],
        *,
        rank: int | None = None,
        world_size: int | None = None,
        even: bool = True,
    ) -> None:
        self.sampler = sampler
        current_rank, current_world_size = _place()
        self.rank = current_rank if rank is None else rank
        self.world_size = current_world_size if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise TorsoError(f"rank {self.rank} is outside 0 ... {self.world_size - 1}")
        self.even = even

    def set_epoch(self, epoch: int) -> None:
        """Use epoch `epoch`'s order of the wrapped sampler."""
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        order = list(self.sampler)
        if self.even:
            order = order[: len(order) - len(order) % self.world_size]
        return iter(order[self.rank :: self.world_size])

    def __len__(self) -> int:
        total = len(self.sampler)
        if self.even:
            return total // self.world_size
        return len(range(self.rank, total, self.world_size))


def shard_samplers(seed: int = 0) -> dict[str, Any]:
    """`train_sampler` and `valid_sampler` factories for `torso.data.load_data`, for this process.

    Training: the shuffled order of a single process with the same seed (a function of seed and
    epoch), shared out by `ShardSampler`; validation: the files in order, shared out without
    padding. Use as `load_data(path, batch_size=per_process, **shard_samplers(seed), seed=seed)`.
    """
    from torch.utils.data import SequentialSampler

    from torso.data.loaders import EpochSampler

    return {
        "train_sampler": lambda dataset: ShardSampler(EpochSampler(len(dataset), seed)),
        "valid_sampler": lambda dataset: ShardSampler(SequentialSampler(dataset), even=False),
    }


def check_loader_is_sharded(loader: Any, name: str) -> None:
    """Raise unless `loader` gives this process its own share (a `ShardSampler`, or for training
    a `DistributedSampler`), as every loader must under torchrun."""
    if loader is None or not is_distributed():
        return
    sampler = getattr(loader, "sampler", None)
    if sampler is None:
        return  # not a DataLoader: the caller shares the data out itself
    if isinstance(sampler, ShardSampler):
        if name == "validation" and sampler.even:
            raise TorsoError(
                "the validation loader's ShardSampler drops samples (even=True); use even=False "
                "so every validation image counts once"
            )
        return
    if isinstance(sampler, torch.utils.data.DistributedSampler):
        if name == "training":
            return
        raise TorsoError(
            "the validation loader uses a DistributedSampler, which repeats images to even out "
            "the processes; use torso.distributed.ShardSampler(..., even=False) so every "
            "validation image counts once"
        )
    raise TorsoError(
        f"under torchrun every process needs its own share of the {name} data: build the "
        "loaders with torso.data.load_data(..., **torso.distributed.shard_samplers(seed))"
    )
