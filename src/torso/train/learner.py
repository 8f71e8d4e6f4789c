"""The Learner: a model, its data, its task and an optimiser, and the training loop.

It keeps fastai's meaning for the words people know from the book:

* `freeze()` trains the head only, `unfreeze()` everything, `freeze_to(n)` the groups from `n`
  (groups come from `torso.models.param_groups`: the body's groups, then the head);
* a learning rate may be a number, a `slice` spread over the groups, or one rate per group
  (`torso.train.schedules.spread_learning_rate`);
* `fit_one_cycle` (warm-up to `lr_max`, cosine annealing, momentum 0.95 → 0.85 → 0.95) and
  `fine_tune` (one frozen cycle, then half the rate, unfreeze and `slice(base_lr / lr_mult,
  base_lr)`);
* AdamW (betas 0.9/0.99, eps 1e-5 as fastai's Adam) with weight decay 0.01, none on the
  parameters of normalisation layers nor on biases.

Every training call is a list of *phases* (a fine-tune is two). The phases, the position in them,
the weights, the optimiser, the random generators, the history and the callbacks' state are saved
after every epoch (`<out>/state.safetensors`, atomically), so `resume()` continues a killed run
exactly where the last finished epoch left it.

Under torchrun (several processes, `torso.train.distributed`) the same calls train with
DistributedDataParallel: each process takes its share of every batch, the gradients are averaged
across processes, validation metrics cover the whole validation set once, and only the main
process runs the callbacks and writes files.
"""

from __future__ import annotations

import copy
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from torso.errors import TorsoError
from torso.tasks.base import Task
from torso.train import distributed
from torso.train.callbacks.base import Callback
from torso.train.checkpoint import (
    STATE_FILE,
    capture_rng,
    load_training_state,
    optimizer_from_tensors,
    optimizer_to_tensors,
    restore_rng,
    save_model,
    save_training_state,
)
from torso.train.schedules import (
    LearningRate,
    one_cycle_learning_rate,
    one_cycle_momentum,
    spread_learning_rate,
)

NORM_TYPES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
)


def set_seed(seed: int) -> None:
    """Seed Python's, NumPy's and torch's random generators (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def is_norm_layer(module: nn.Module) -> bool:
    """Whether `module` is a normalisation layer (BatchNorm, LayerNorm, GroupNorm, ... and
    timm's subclasses of them, which share these base classes or a `Norm` class name)."""
    return isinstance(module, NORM_TYPES) or type(module).__name__.endswith(("Norm", "Norm2d"))


def no_decay_parameters(model: nn.Module) -> set[int]:
    """Ids of the parameters that get no weight decay: normalisation layers' and all biases."""
    chosen: set[int] = set()
    for module in model.modules():
        norm = is_norm_layer(module)
        for name, parameter in module.named_parameters(recurse=False):
            if norm or name == "bias" or name.endswith("_bias"):
                chosen.add(id(parameter))
    return chosen


@dataclass
class Phase:
    """One call of a schedule over some epochs, as saved for resuming.

    `lrs` holds one rate per parameter group (the peak rate for one-cycle); `frozen_to` is the
    first trainable group during the phase.
    """

    epochs: int
    lrs: list[float]
    frozen_to: int
    schedule: str = "one_cycle"  # or "constant"
    div: float = 25.0
    div_final: float = 1e5
    pct_start: float = 0.25
    moms: list[float] = field(default_factory=lambda: [0.95, 0.85, 0.95])
    weight_decay: float | None = None


class Learner:
    """Trains `model` on batches `(x, y)` from `train` and measures it on `valid`.

    Args:
        model: usually `torso.create_model(...)`, i.e. `nn.Sequential(body, head)`; any module
            works if `splitter` says how to group its parameters. `x` may be a tuple of inputs
            (pair models): the model is called as `model(*x)`.
        train, valid: iterables of `(x, y)` batches, e.g. `dls.train` / `dls.valid` from
            `torso.data.load_data` or plain `torch.utils.data.DataLoader`s. A loader with
            `set_epoch(epoch)` gets it at each epoch's start. Either may be None (prediction only).
        task: from `torso.tasks.get_task`; owns loss, metrics and decoding.
        config: the model description saved in `torso.json` (see
            `torso.train.checkpoint.make_config`); needed to save a loadable model.
        callbacks: extra callbacks (progress, CSV log, early stopping, save-best, ...).
        weight_decay: AdamW's decoupled weight decay (not applied to norm layers and biases).
        train_bn: keep training normalisation layers of frozen groups (fastai's default). With
            False their parameters freeze and the layers stay in eval mode.
        splitter: `model -> list of parameter lists`; default `torso.models.param_groups`.
        device: default CUDA when available, else CPU.
        channels_last: memory format for 4-D inputs; default: on when the model has convolutions.
        mixed_precision: `"bf16"`, `"fp16"` or `"no"`; default: bf16 (or fp16) on CUDA, none on
            CPU (bf16 on a CPU without bf16 instructions is an order of magnitude slower).
        compile: run the model through `torch.compile`.
        accumulate: add the gradients of this many batches before each optimiser step.
        sync_batchnorm: under torchrun on GPUs, BatchNorm layers compute their statistics over
            the global batch (all processes) instead of each process's share.
        out: run folder for the training state, `metrics.csv`, the model and the report.
    """

    def __init__(
        self,
        model: nn.Module,
        train: Iterable | None = None,
        valid: Iterable | None = None,
        *,
        task: Task,
        config: dict[str, Any] | None = None,
        callbacks: Sequence[Callback] = (),
        weight_decay: float = 0.01,
        train_bn: bool = True,
        splitter: Callable[[nn.Module], list[list[nn.Parameter]]] | None = None,
        device: str | torch.device | None = None,
        channels_last: bool | None = None,
        mixed_precision: str | None = None,
        compile: bool = False,
        accumulate: int = 1,
        sync_batchnorm: bool = False,
        out: str | os.PathLike | None = None,
    ) -> None:
        if accumulate < 1:
            raise TorsoError(f"accumulate must be at least 1, got {accumulate}")
        if weight_decay < 0:
            raise TorsoError(f"weight_decay must not be negative, got {weight_decay}")
        # Under torchrun this joins the process group and picks this process's GPU.
        self.device = distributed.setup(device)
        self.distributed = distributed.is_distributed()
        distributed.check_loader_is_sharded(train, "training")
        distributed.check_loader_is_sharded(valid, "validation")
        if sync_batchnorm:
            model = self._convert_sync_batchnorm(model)
        self.model = model.to(self.device)
        self.train_loader = train
        self.valid_loader = valid
        self.task = task
        self.config = dict(config) if config is not None else {"task": task.name}
        self.config.setdefault("task_options", dict(task.options))
        # Callbacks write files and draw progress: under torchrun only the main process runs
        # them; what they decide (`stop_training`) reaches the other processes each epoch.
        self.callbacks: list[Callback] = list(callbacks) if distributed.is_main_process() else []
        self.weight_decay = weight_decay
        self.train_bn = train_bn
        self.splitter = splitter
        self.accumulate = accumulate
        self.out = Path(out) if out is not None else None

        has_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
        self.channels_last = has_conv if channels_last is None else channels_last
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.mixed_precision = self._choose_precision(mixed_precision)
        self._scaler = torch.amp.GradScaler("cuda") if self.mixed_precision == "fp16" else None
        self._forward = torch.compile(self.model) if compile else self.model
        self._compile = compile
        # DistributedDataParallel around the model, built when training starts and rebuilt
        # whenever the set of trainable parameters changes (it registers only those).
        self._parallel: nn.Module | None = None
        self._ddp: nn.Module | None = None

        self.groups = self._parameter_groups()
        self.frozen_to = 0
        self.optimizer = self._create_optimizer()

        # Progress, visible to callbacks.
        self.history: list[dict[str, float]] = []
        self.epoch = 0
        self.total_epochs = 0
        self.batch_index = 0
        self.num_batches = 0
        self.stop_training = False
        self._phases: list[Phase] = []
        self._phase_index = 0
        self._phase_epoch = 0

    # -- set-up ----------------------------------------------------------------------------
    def _choose_precision(self, requested: str | None) -> str:
        if requested not in (None, "no", "bf16", "fp16"):
            raise TorsoError(f"mixed_precision must be 'bf16', 'fp16' or 'no', got {requested!r}")
        if requested is not None:
            if requested == "fp16" and self.device.type != "cuda":
                raise TorsoError("fp16 mixed precision needs a CUDA device; use 'bf16' or 'no'")
            return requested
        if self.device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "no"

    def _convert_sync_batchnorm(self, model: nn.Module) -> nn.Module:
        if not self.distributed:
            return model  # one process: plain BatchNorm already sees the whole batch
        if self.device.type != "cuda":
            raise TorsoError(
                "sync_batchnorm (--sync-bn) needs one GPU per process: PyTorch's SyncBatchNorm "
                "does not run on CPUs"
            )
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)

    def _training_model(self, x: Any) -> nn.Module:
        """The module training batch `x` goes through: DistributedDataParallel when distributed."""
        if not self.distributed:
            return self._forward
        if self._parallel is None:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self._ddp = DistributedDataParallel(
                self.model, device_ids=ids, find_unused_parameters=self._has_unused_parameters(x)
            )
            self._parallel = torch.compile(self._ddp) if self._compile else self._ddp
        return self._parallel

    def _has_unused_parameters(self, x: Any) -> bool:
        """Whether a trainable parameter takes no part in the forward pass of (two samples of)
        `x`, e.g. a norm layer of the backbone's classifier that a body keeps. DDP must then
        look for such parameters every step, which costs time, so it does so only when needed."""
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        sample = type(x)(item[:2] for item in x) if isinstance(x, tuple | list) else x[:2]
        self.model.eval()  # the same parameters take part; no running statistics change
        try:
            outputs = self._call_model(sample, self.model)
            grads = torch.autograd.grad(outputs.float().sum(), trainable, allow_unused=True)
        finally:
            self._train_mode()
        return any(grad is None for grad in grads)

    def _parameter_groups(self) -> list[list[nn.Parameter]]:
        if self.splitter is not None:
            groups = self.splitter(self.model)
        else:
            from torso.models import param_groups

            groups = param_groups(self.model)
        groups = [list(group) for group in groups]
        if not groups or not any(groups):
            raise TorsoError("the model has no parameters to train")
        return groups

    def _create_optimizer(self) -> torch.optim.Optimizer:
        no_decay = no_decay_parameters(self.model)
        torch_groups = []
        for index, group in enumerate(self.groups):
            decay = [p for p in group if id(p) not in no_decay]
            plain = [p for p in group if id(p) in no_decay]
            for params, decay_rate in ((decay, self.weight_decay), (plain, 0.0)):
                if params:
                    torch_groups.append(
                        {
                            "params": params,
                            "weight_decay": decay_rate,
                            "group": index,
                            "decays": decay_rate > 0,
                        }
                    )
        return torch.optim.AdamW(torch_groups, lr=1e-3, betas=(0.9, 0.99), eps=1e-5)

    # -- freezing --------------------------------------------------------------------------
    def freeze_to(self, n: int) -> None:
        """Train only the parameter groups from `n` on (negative counts from the end)."""
        from torso.models import freeze_to

        count = len(self.groups)
        if not -count <= n <= count:
            raise TorsoError(f"freeze_to({n}): the model has {count} parameter groups")
        if self.splitter is None:
            freeze_to(self.model, n, train_bn=self.train_bn)
        else:
            first = n % count if n < 0 else n
            for index, group in enumerate(self.groups):
                for parameter in group:
                    parameter.requires_grad_(index >= first)
            if self.train_bn:
                for module in self.model.modules():
                    if is_norm_layer(module):
                        for parameter in module.parameters(recurse=False):
                            parameter.requires_grad_(True)
        self.frozen_to = n % count if n < 0 else n
        self._parallel = self._ddp = None

    def freeze(self) -> None:
        """Train the head (the last group) only."""
        self.freeze_to(-1)

    def unfreeze(self) -> None:
        """Train every group."""
        self.freeze_to(0)

    def _train_mode(self) -> None:
        """`model.train()`, but norm layers whose parameters are all frozen stay in eval mode,
        so their running statistics stay those of the pretrained body (train_bn=False)."""
        self.model.train()
        if not self.train_bn:
            from torso.models import set_frozen_norm_eval

            set_frozen_norm_eval(self.model)

    # -- hyper-parameters ------------------------------------------------------------------
    def learning_rates(self) -> list[float]:
        """The current learning rate of each parameter group."""
        rates = [0.0] * len(self.groups)
        for group in self.optimizer.param_groups:
            rates[group["group"]] = group["lr"]
        return rates

    def _set_hyper(self, lrs: Sequence[float], beta1: float | None, weight_decay: float | None):
        for group in self.optimizer.param_groups:
            group["lr"] = lrs[group["group"]]
            if beta1 is not None:
                group["betas"] = (beta1, group["betas"][1])
            if weight_decay is not None and group["decays"]:
                group["weight_decay"] = weight_decay

    def _schedule(self, phase: Phase, step: int, total: int) -> tuple[list[float], float | None]:
        if phase.schedule == "constant":
            return list(phase.lrs), None
        position = step / total
        lrs = [
            one_cycle_learning_rate(
                lr, position, div=phase.div, div_final=phase.div_final, pct_start=phase.pct_start
            )
            for lr in phase.lrs
        ]
        beta1 = one_cycle_momentum(position, moms=tuple(phase.moms), pct_start=phase.pct_start)
        return lrs, beta1

    def steps_per_epoch(self) -> int:
        """Optimiser steps in one epoch (batches / accumulate, rounded up)."""
        return math.ceil(self._train_length() / self.accumulate)

    def _train_length(self) -> int:
        if self.train_loader is None:
            raise TorsoError("this Learner has no training data")
        try:
            length = len(self.train_loader)
        except TypeError:
            raise TorsoError("the training loader must have a length (len(loader))") from None
        if length == 0:
            raise TorsoError("the training loader yields no batches")
        return length

    # -- training --------------------------------------------------------------------------
    def fit(self, epochs: int, lr: LearningRate = 1e-3, *, weight_decay: float | None = None):
        """Train for `epochs` at a constant learning rate (a number, slice or list)."""
        self._run([self._phase(epochs, lr, "constant", weight_decay=weight_decay)])

    def fit_one_cycle(
        self,
        epochs: int,
        lr_max: LearningRate = 1e-3,
        *,
        div: float = 25.0,
        div_final: float = 1e5,
        pct_start: float = 0.25,
        moms: tuple[float, float, float] = (0.95, 0.85, 0.95),
        weight_decay: float | None = None,
    ) -> None:
        """Train for `epochs` with the one-cycle policy peaking at `lr_max` (see module doc)."""
        self._run(
            [
                self._phase(
                    epochs,
                    lr_max,
                    "one_cycle",
                    div=div,
                    div_final=div_final,
                    pct_start=pct_start,
                    moms=moms,
                    weight_decay=weight_decay,
                )
            ]
        )

    def fine_tune(
        self,
        epochs: int,
        base_lr: float = 2e-3,
        *,
        freeze_epochs: int = 1,
        lr_mult: float = 100,
        pct_start: float = 0.3,
        div: float = 5.0,
        weight_decay: float | None = None,
    ) -> None:
        """fastai's recipe for a pretrained body: `freeze_epochs` of one-cycle on the head at
        `slice(base_lr)`, then halve `base_lr`, unfreeze, and `epochs` of one-cycle at
        `slice(base_lr / lr_mult, base_lr)`."""
        head_only = len(self.groups) - 1
        phases = []
        if freeze_epochs > 0:
            phases.append(
                self._phase(
                    freeze_epochs,
                    slice(base_lr),
                    "one_cycle",
                    frozen_to=head_only,
                    pct_start=0.99,
                    weight_decay=weight_decay,
                )
            )
        base_lr /= 2
        if epochs > 0:
            phases.append(
                self._phase(
                    epochs,
                    slice(base_lr / lr_mult, base_lr),
                    "one_cycle",
                    frozen_to=0,
                    pct_start=pct_start,
                    div=div,
                    weight_decay=weight_decay,
                )
            )
        self._run(phases)

    def _phase(
        self,
        epochs: int,
        lr: LearningRate,
        schedule: str,
        *,
        frozen_to: int | None = None,
        **options: Any,
    ) -> Phase:
        if not isinstance(epochs, int) or epochs < 0:
            raise TorsoError(f"epochs must be a whole number >= 0, got {epochs}")
        moms = options.pop("moms", (0.95, 0.85, 0.95))
        pct_start = options.get("pct_start", 0.25)
        if not 0 <= pct_start <= 1:
            raise TorsoError(f"pct_start must be between 0 and 1, got {pct_start}")
        return Phase(
            epochs=epochs,
            lrs=spread_learning_rate(lr, len(self.groups)),
            frozen_to=self.frozen_to if frozen_to is None else frozen_to,
            schedule=schedule,
            moms=list(moms),
            **options,
        )

    def _run(self, phases: list[Phase], phase_index: int = 0, phase_epoch: int = 0) -> None:
        self._phases = phases
        self.stop_training = False
        done_before = sum(p.epochs for p in phases[:phase_index]) + phase_epoch
        self.total_epochs = self.epoch - done_before + sum(p.epochs for p in phases)
        for callback in self.callbacks:
            callback.on_train_start(self)
        try:
            for index in range(phase_index, len(phases)):
                phase = phases[index]
                self._phase_index = index
                self.freeze_to(phase.frozen_to)
                start = phase_epoch if index == phase_index else 0
                for epoch_in_phase in range(start, phase.epochs):
                    self._phase_epoch = epoch_in_phase
                    self._train_epoch(phase, epoch_in_phase)
                    if self.stop_training:
                        break
                if self.stop_training:
                    break
        finally:
            for callback in self.callbacks:
                callback.on_train_end(self)

    def _to_device(self, value: Any) -> Any:
        if isinstance(value, tuple | list):
            return type(value)(self._to_device(item) for item in value)
        if isinstance(value, torch.Tensor):
            value = value.to(self.device, non_blocking=True)
            if self.channels_last and value.ndim == 4 and value.is_floating_point():
                value = value.contiguous(memory_format=torch.channels_last)
        return value

    def _autocast(self):
        if self.mixed_precision == "no":
            return nullcontext()
        dtype = torch.bfloat16 if self.mixed_precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _call_model(self, x: Any, model: nn.Module | None = None) -> torch.Tensor:
        forward = self._forward if model is None else model
        with self._autocast():
            return forward(*x) if isinstance(x, tuple | list) else forward(x)

    def _train_epoch(self, phase: Phase, epoch_in_phase: int) -> None:
        started = time.perf_counter()
        loader = self.train_loader
        self.num_batches = self._train_length()
        steps = self.steps_per_epoch()
        total_steps = max(phase.epochs * steps, 1)
        step = epoch_in_phase * steps
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(self.epoch)
        for callback in self.callbacks:
            callback.on_epoch_start(self)
        self._train_mode()
        loss_sum, count = 0.0, 0
        self.optimizer.zero_grad(set_to_none=True)
        for self.batch_index, (x, y) in enumerate(loader):
            if self.batch_index % self.accumulate == 0:
                lrs, beta1 = self._schedule(phase, step, total_steps)
                self._set_hyper(lrs, beta1, phase.weight_decay)
            last = self.batch_index + 1 == self.num_batches
            stepping = (self.batch_index + 1) % self.accumulate == 0 or last
            x, y = self._to_device(x), self._to_device(y)
            model = self._training_model(x)
            # Gradients of batches that only accumulate need no exchange between processes.
            quiet = self._ddp.no_sync() if self._ddp is not None and not stepping else nullcontext()
            with quiet:
                outputs = self._call_model(x, model)
                loss = self.task.loss(outputs, y)
                scaled = loss / self.accumulate
                if self._scaler is not None:
                    self._scaler.scale(scaled).backward()
                else:
                    scaled.backward()
            if stepping:
                if self._scaler is not None:
                    self._scaler.step(self.optimizer)
                    self._scaler.update()
                else:
                    self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                step += 1
            size = _batch_size(y)
            # Summed on the device: reading the loss (`.item()`) every batch would make the CPU
            # wait for the GPU each time.
            loss = loss.detach()
            loss_sum = loss_sum + loss.float() * size
            count += size
            for callback in self.callbacks:
                callback.on_batch_end(self, loss)
        self.batch_index = self.num_batches
        loss_total, count = distributed.sum_across([float(loss_sum), count])
        train_loss = loss_total / max(count, 1)
        if not math.isfinite(train_loss):
            raise TorsoError(
                f"the training loss became {train_loss} in epoch {self.epoch + 1}: "
                "the learning rate is probably too high"
            )
        row: dict[str, float] = {"epoch": self.epoch + 1, "train_loss": train_loss}
        if self.valid_loader is not None:
            row.update(self.validate())
        row["lr"] = self.learning_rates()[-1]
        row["time"] = round(time.perf_counter() - started, 3)
        self.history.append(row)
        for callback in self.callbacks:
            callback.on_epoch_end(self, row)
        self.stop_training = bool(distributed.broadcast_from_main(self.stop_training))
        self.epoch += 1
        if epoch_in_phase + 1 < phase.epochs:
            self._phase_epoch = epoch_in_phase + 1
        else:
            self._phase_index, self._phase_epoch = self._phase_index + 1, 0
        if self.out is not None and distributed.is_main_process():
            self.save_state(self.out / STATE_FILE)

    # -- evaluation ------------------------------------------------------------------------
    def _batches(self, loader: Iterable | None, name: str = "validation") -> Iterable:
        loader = self.valid_loader if loader is None else loader
        if loader is None:
            raise TorsoError(f"this Learner has no {name} data")
        return loader

    @torch.no_grad()
    def validate(self, loader: Iterable | None = None) -> dict[str, float]:
        """Loss and the task's metrics over `loader` (default: the validation loader).

        Under torchrun a loader that gives each process its share (`ShardSampler`) is measured
        by all processes together, every image once, and all of them get the same numbers; any
        other loader is measured by the calling process alone.
        """
        batches = self._batches(loader)
        shared = self._measured_together(batches)
        metrics = None
        self.model.eval()
        loss_sum, count = 0.0, 0
        for x, y in batches:
            x, y = self._to_device(x), self._to_device(y)
            outputs = self._call_model(x)
            size = _batch_size(y)
            loss_sum = loss_sum + self.task.loss(outputs, y).detach().float() * size
            count += size
            if metrics is None:
                if self.config.get("num_outputs") is None and outputs.ndim > 1:
                    self.config["num_outputs"] = int(outputs.shape[1])
                metrics = {
                    name: m.to(self.device) for name, m in self.task.metrics(self.config).items()
                }
                for metric in metrics.values():
                    _choose_metric_sync(metric, shared)
            predictions, targets = self.task.metric_inputs(outputs, y)
            for metric in metrics.values():
                metric.update(predictions, targets)
            for callback in self.callbacks:
                callback.on_validation_batch_end(self)
        if metrics is None:
            raise TorsoError("the validation loader yields no batches")
        loss_total, count = float(loss_sum), count
        if shared:
            loss_total, count = distributed.sum_across([loss_total, count])
        results = {"valid_loss": loss_total / count}
        results.update({name: float(metric.compute()) for name, metric in metrics.items()})
        return results

    def _measured_together(self, loader: Iterable) -> bool:
        """Whether all processes measure `loader` together, each its own share (a collective
        call then: every process must make it)."""
        shared = self.distributed and isinstance(
            getattr(loader, "sampler", None), distributed.ShardSampler
        )
        if shared:
            # Every process measures the main process's model (BatchNorm statistics included).
            distributed.broadcast_buffers(self.model)
            shares = distributed.gather_tensors(torch.tensor([len(loader)]))
            if int(shares.min()) == 0:
                raise TorsoError(
                    f"the validation set is too small for {distributed.world_size()} processes: "
                    "each needs at least one validation image"
                )
        return shared

    @torch.no_grad()
    def get_preds(
        self, loader: Iterable | None = None, *, with_loss: bool = False, with_inputs: bool = False
    ) -> dict[str, torch.Tensor]:
        """Activations (probabilities or values), targets and optionally per-sample losses and
        the inputs over `loader` (default: validation), all on the CPU.

        Returns a dict with `"activations"` (N, ...), `"targets"` (N, ...), and `"losses"` (N,)
        and `"inputs"` (N, C, H, W) when asked for. Under torchrun, a loader shared out among the
        processes (the default validation loader) is gathered: every process gets all N rows,
        in the loader's order.
        """
        batches = self._batches(loader)
        shared = self._measured_together(batches)
        self.model.eval()
        parts: dict[str, list[torch.Tensor]] = {"activations": [], "targets": []}
        if with_loss:
            parts["losses"] = []
        if with_inputs:
            parts["inputs"] = []
        for x, y in batches:
            xd, yd = self._to_device(x), self._to_device(y)
            outputs = self._call_model(xd)
            parts["activations"].append(self.task.activation(outputs).cpu())
            parts["targets"].append(y.cpu() if isinstance(y, torch.Tensor) else torch.as_tensor(y))
            if with_loss:
                parts["losses"].append(self.task.loss(outputs, yd, reduction="none").float().cpu())
            if with_inputs:
                parts["inputs"].append(x.cpu() if isinstance(x, torch.Tensor) else x[0].cpu())
        if not parts["activations"]:
            raise TorsoError("the loader yields no batches")
        results = {key: torch.cat(values) for key, values in parts.items()}
        if shared:
            results = {key: distributed.gather_in_order(value) for key, value in results.items()}
        return results

    @torch.no_grad()
    def tta(self, loader: Iterable | None = None) -> dict[str, torch.Tensor]:
        """Test-time augmentation: activations averaged over each image and its mirror image.

        Outputs with the input's spatial size (segmentation) are mirrored back before averaging.
        Returns `{"activations", "targets"}` as `get_preds` does (gathered likewise).
        """
        batches = self._batches(loader)
        shared = self._measured_together(batches)
        self.model.eval()
        activations, targets = [], []
        for x, y in batches:
            activations.append(self._tta_batch(self._to_device(x)).cpu())
            targets.append(y.cpu() if isinstance(y, torch.Tensor) else torch.as_tensor(y))
        if not activations:
            raise TorsoError("the loader yields no batches")
        results = {"activations": torch.cat(activations), "targets": torch.cat(targets)}
        if shared:
            results = {key: distributed.gather_in_order(value) for key, value in results.items()}
        return results

    def _tta_batch(self, x: Any) -> torch.Tensor:
        plain = self.task.activation(self._call_model(x))
        mirrored_x = (
            type(x)(item.flip(-1) for item in x) if isinstance(x, tuple | list) else x.flip(-1)
        )
        mirrored = self.task.activation(self._call_model(mirrored_x))
        if mirrored.ndim >= 3:
            mirrored = mirrored.flip(-1)
        return (plain + mirrored) / 2

    @torch.no_grad()
    def predict(
        self,
        images: torch.Tensor | str | os.PathLike | Sequence[str | os.PathLike],
        *,
        tta: bool = False,
        batch_size: int = 32,
    ) -> list[dict[str, Any]]:
        """Predictions for images: a tensor `(N, C, H, W)` or `(C, H, W)` in [0, 1], or image
        file paths (read at the model's saved size and channels).

        Returns one record per image from the task, e.g. `{"prediction": "cat",
        "probability": 0.97}` for classification.
        """
        batch = self._prepare_images(images)
        self.model.eval()
        results = []
        for start in range(0, len(batch), batch_size):
            x = self._to_device(batch[start : start + batch_size])
            if tta:
                results.append(self._tta_batch(x).cpu())
            else:
                results.append(self.task.activation(self._call_model(x)).cpu())
        activations = torch.cat(results)
        return self.task.describe(activations, self.config.get("classes"))

    def _prepare_images(self, images: Any) -> torch.Tensor:
        if isinstance(images, torch.Tensor):
            batch = images.unsqueeze(0) if images.ndim == 3 else images
            if batch.ndim != 4:
                raise TorsoError(
                    f"images must be (N, C, H, W) or (C, H, W), got {tuple(images.shape)}"
                )
            return batch.float()
        paths = [images] if isinstance(images, str | os.PathLike) else list(images)
        if not paths:
            raise TorsoError("no images to predict")
        size = self.config.get("size")
        if size is None:
            raise TorsoError("this model's config has no image size; pass a tensor instead")
        from torso.data import load_images

        if isinstance(size, list):
            size = size[0]
        channels = int(self.config.get("in_channels", 3))
        return load_images(paths, size, channels, resize=self.config.get("resize", "squish"))

    # -- saving and resuming ---------------------------------------------------------------
    def save_model(self, folder: str | os.PathLike) -> Path:
        """Save a loadable model folder (`model.safetensors` + `torso.json`); under torchrun only
        the main process writes it (the others return the same path)."""
        if not distributed.is_main_process():
            return Path(folder)
        return save_model(self.model, self.config, folder)

    def save_state(self, path: str | os.PathLike) -> None:
        """Write everything `resume` needs, atomically, to `path` (a safetensors file)."""
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        optimizer_tensors, optimizer_info = optimizer_to_tensors(self.optimizer.state_dict())
        tensors.update(optimizer_tensors)
        rng_tensors, rng_info = capture_rng()
        tensors.update(rng_tensors)
        info = {
            "phases": [asdict(phase) for phase in self._phases],
            "phase_index": self._phase_index,
            "phase_epoch": self._phase_epoch,
            "epoch": self.epoch,
            "stopped": self.stop_training,
            "frozen_to": self.frozen_to,
            "history": self.history,
            "optimizer": optimizer_info,
            "rng": rng_info,
            "callbacks": {
                f"{index}:{type(cb).__name__}": cb.state_dict()
                for index, cb in enumerate(self.callbacks)
            },
            "config": self.config,
            "accumulate": self.accumulate,
        }
        if self._scaler is not None:
            info["scaler"] = {
                k: (v.item() if isinstance(v, torch.Tensor) else v)
                for k, v in self._scaler.state_dict().items()
            }
        save_training_state(path, tensors, info)

    def resume(self, path: str | os.PathLike | None = None) -> None:
        """Continue training from a saved state (default `<out>/state.safetensors`)."""
        if path is None:
            if self.out is None:
                raise TorsoError("resume() needs a state file or a Learner with a run folder")
            path = self.out / STATE_FILE
        tensors, info = load_training_state(path)
        model_state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
        try:
            self.model.load_state_dict(model_state, strict=True)
        except RuntimeError:
            raise TorsoError(
                f"the training state in '{path}' belongs to a different model"
            ) from None
        if info.get("accumulate", 1) != self.accumulate:
            raise TorsoError(
                f"'{path}' was trained with accumulate={info.get('accumulate')}; "
                "resume with the same value"
            )
        self.freeze_to(int(info["frozen_to"]))
        self.optimizer.load_state_dict(optimizer_from_tensors(tensors, info["optimizer"]))
        if self._scaler is not None and "scaler" in info:
            self._scaler.load_state_dict(info["scaler"])
        self.history = [dict(row) for row in info["history"]]
        self.epoch = int(info["epoch"])
        states = info.get("callbacks", {})
        for index, callback in enumerate(self.callbacks):
            key = f"{index}:{type(callback).__name__}"
            if key in states:
                callback.load_state_dict(states[key])
        restore_rng(tensors, info["rng"])
        phases = [Phase(**phase) for phase in info["phases"]]
        if info.get("stopped") or int(info["phase_index"]) >= len(phases):
            return
        self._run(phases, int(info["phase_index"]), int(info["phase_epoch"]))

    # -- lr_find ---------------------------------------------------------------------------
    def lr_find(self, **options: Any):
        """Run the learning-rate finder; see `torso.train.lr_find.lr_find` for the options.

        The plot goes to `<out>/lr_find.png` when the Learner has a run folder and no `plot`
        path is given.
        """
        from torso.train.lr_find import lr_find

        if options.get("plot") is None and self.out is not None:
            options["plot"] = self.out / "lr_find.png"
        if not distributed.is_main_process():
            options["plot"] = None  # under torchrun only the main process writes files
        return lr_find(self, **options)

    def snapshot(self) -> dict[str, Any]:
        """A deep copy of weights, optimiser, freezing and RNG states (`restore` puts it back)."""
        return {
            "model": copy.deepcopy(self.model.state_dict()),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "frozen_to": self.frozen_to,
            "rng": capture_rng(),
        }

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Undo everything since `snapshot()`."""
        self.model.load_state_dict(snapshot["model"])
        self.optimizer.load_state_dict(snapshot["optimizer"])
        self.freeze_to(snapshot["frozen_to"])
        restore_rng(*snapshot["rng"])


def _choose_metric_sync(metric: nn.Module, shared: bool) -> None:
    """torchmetrics gathers a metric's state from all processes whenever a process group exists;
    that is right only when every process measured its own share of the same loader."""
    for part in metric.modules():
        if hasattr(part, "distributed_available_fn"):
            part.distributed_available_fn = lambda: shared


def _batch_size(targets: Any) -> int:
    if isinstance(targets, torch.Tensor):
        return int(targets.shape[0]) if targets.ndim else 1
    return len(targets)
