"""The Learner: a model, its data, its task and an optimiser, and the training loop.

fastai's meanings are kept: `freeze` / `unfreeze` / `freeze_to(n)` over the parameter groups
(the body's, then the head), learning rates as a number, a `slice` or one per group,
`fit_one_cycle`, `fine_tune`, `lr_find` (on the learner as it stands), AdamW's weight decay.

The loop fires the events of `torso.train.callbacks.base`; progress, logs, early stopping,
save-best and the learning-rate finder are callbacks, and the variations of a step are small
pieces: `precision` (autocast, fp16 scaling), `placement` (device, channels_last), `parallel`
(DDP, `no_sync` while accumulating), `optimizer` (AdamW groups). A training call is a list of
`schedules.Phase`s; after every epoch `torso.train.state` saves what `resume()` needs. Under
torchrun each process takes its share of every batch and only the main process runs callbacks
(but those that `run_everywhere`) and writes files. Prediction is `torso.predictor.Predictor`'s.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from torso import checkpoint, distributed
from torso.errors import TorsoError
from torso.models import freeze_to as freeze_model_to
from torso.models import set_frozen_norm_eval
from torso.tasks.base import Task
from torso.train import autoconfig, finite, optimizer, state
from torso.train.callbacks.base import Callback, CancelFit
from torso.train.evaluation import batch_size, batches_in, evaluate
from torso.train.parallel import Parallel
from torso.train.parallel import sync_batchnorm as sync_batchnorm_layers
from torso.train.placement import choose_memory_format, probe_learner_layout, to_device
from torso.train.precision import Precision, choose_precision
from torso.train.schedules import LearningRate, Phase, fine_tune_phases, spread_learning_rate
from torso.train.state import set_seed as set_seed  # where callers have always found it

if TYPE_CHECKING:
    from torso.config import RunConfig
    from torso.predictor import Predictor
    from torso.train.lr_find import LRFindResult


class Learner:
    """Trains `model` on batches `(x, y)` from `train` and measures it on `valid`.

    Args:
        model: usually from `torso.create_model` or a task's `build_model`; any module, given
            a `splitter`. A tuple `x` (pair models) is passed as `model(*x)`.
        train, valid: iterables of `(x, y)` batches (`set_epoch(epoch)` is called when they
            have it), either may be None; or `train` is `load_data`'s `DataLoaders`.
        task: from `torso.tasks.get_task`; owns loss, metrics and decoding.
        config: the run's `RunConfig` (never changed); when None the Learner makes one from
            model, task, data and first batch (`torso.train.autoconfig`) to save and predict.
        callbacks: progress, CSV log, early stopping, save-best, ... (`Callback`s).
        weight_decay: AdamW's decoupled weight decay (none on norm layers and biases).
        train_bn: normalisation layers of frozen groups keep training (fastai's default); with
            False they freeze and stay in eval mode.
        splitter: `model -> list of parameter lists`; default `torso.models.param_groups`.
        device: default CUDA when available, else CPU. channels_last: default on for conv
            models on a GPU, on a CPU if faster on the first batch (`placement`). compile:
            `torch.compile`. mixed_precision: "bf16", "fp16", "no". accumulate: batches per step.
        sync_batchnorm: under torchrun on GPUs, BatchNorm statistics over the global batch.
        out: run folder for the training state, `metrics.csv`, the model and the report.
    """

    def __init__(
        self,
        model: nn.Module,
        train: Iterable | None = None,
        valid: Iterable | None = None,
        *,
        task: Task,
        config: RunConfig | None = None,
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
        optimizer.check_settings(weight_decay=weight_decay, accumulate=accumulate)
        # Under torchrun this joins the process group and picks this process's GPU.
        self.device = distributed.setup(device)
        train, valid, self._facts = autoconfig.split_loaders(train, valid, given=config)
        self._inferred = config is None
        config = config if config is not None else autoconfig.infer_config(model, task, self._facts)
        distributed.check_loader_is_sharded(train, "training")
        distributed.check_loader_is_sharded(valid, "validation")
        if sync_batchnorm:
            model = sync_batchnorm_layers(model, self.device)
        self.model = model.to(self.device)
        self.train_loader, self.valid_loader = train, valid
        self.task, self.config = task, config
        self.callbacks: list[Callback] = list(callbacks)
        self.weight_decay, self.train_bn, self.splitter = weight_decay, train_bn, splitter
        self.accumulate = accumulate
        self.out = Path(out) if out is not None else None
        self.channels_last = choose_memory_format(model, channels_last, self.device, compile)
        self.mixed_precision = choose_precision(mixed_precision, self.device)
        self.precision = Precision(self.mixed_precision, self.device)
        self._forward = torch.compile(self.model) if compile else self.model
        self.parallel = Parallel(self.model, self.device, compile=compile)
        self.groups = optimizer.parameter_groups(self.model, splitter)
        self.frozen_to = 0
        self.optimizer = optimizer.create_optimizer(self.model, self.groups, weight_decay)
        # Progress, visible to callbacks (see `torso.train.callbacks.base`).
        self.history: list[dict[str, float]] = []
        self.epoch = self.total_epochs = self.batch_index = self.num_batches = 0
        self.stop_training = self.stepping = False
        self.x = self.y = self.pred = self.loss = self.loss_grad = None
        self.phases: list[Phase] = []  # the current training call, and where it stands
        self.phase_index = self.phase_epoch = 0

    # -- freezing --------------------------------------------------------------------------
    def freeze_to(self, n: int) -> None:
        """Train only the parameter groups from `n` on (negative counts from the end)."""
        count = len(self.groups)
        if not -count <= n <= count:
            raise TorsoError(f"freeze_to({n}): the model has {count} parameter groups")
        first = n % count if n < 0 else n
        if self.splitter is None:
            freeze_model_to(self.model, n, train_bn=self.train_bn)
        else:
            optimizer.freeze_groups(self.model, self.groups, first, train_bn=self.train_bn)
        self.frozen_to = first
        self.parallel.reset()  # DDP registers only the parameters that train

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
            set_frozen_norm_eval(self.model)

    # -- hyper-parameters ------------------------------------------------------------------
    def learning_rates(self) -> list[float]:
        """The current learning rate of each parameter group."""
        return optimizer.learning_rates(self.optimizer, len(self.groups))

    def set_learning_rates(self, lrs: Sequence[float]) -> None:
        """Set one learning rate per parameter group (callbacks may, in `before_batch`)."""
        optimizer.set_hyper(self.optimizer, lrs)

    def steps_per_epoch(self) -> int:
        """Optimiser steps in one epoch (batches / accumulate, rounded up)."""
        return math.ceil(self.batches_per_epoch() / self.accumulate)

    def batches_per_epoch(self) -> int:
        """Batches in one epoch of the training loader (a TorsoError if there are none)."""
        return batches_in(self.train_loader)

    # -- training calls --------------------------------------------------------------------
    def fit(
        self, epochs: int, lr: LearningRate = 1e-3, *, weight_decay: float | None = None
    ) -> None:
        """Train for `epochs` at a constant learning rate (a number, slice or list).
        `weight_decay`: for this call only (default: the Learner's)."""
        self.fit_phases([self._phase(epochs, lr, "constant", weight_decay=weight_decay)])

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
        options = {"div": div, "div_final": div_final, "pct_start": pct_start, "moms": moms}
        self.fit_phases(
            [self._phase(epochs, lr_max, "one_cycle", weight_decay=weight_decay, **options)]
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
        options = {"freeze_epochs": freeze_epochs, "lr_mult": lr_mult, "pct_start": pct_start}
        options.update(div=div, weight_decay=weight_decay)
        self.fit_phases(fine_tune_phases(epochs, base_lr, len(self.groups), **options))

    def _phase(self, epochs: int, lr: LearningRate, schedule: str, **options: Any) -> Phase:
        options.setdefault("frozen_to", self.frozen_to)
        lrs = spread_learning_rate(lr, len(self.groups))
        return Phase(epochs=epochs, lrs=lrs, schedule=schedule, **options)

    # -- the loop --------------------------------------------------------------------------
    def _event(self, name: str) -> None:
        main = distributed.is_main_process()
        for callback in self.callbacks:
            if main or callback.run_everywhere:
                getattr(callback, name)(self)

    def fit_phases(self, phases: list[Phase], phase_index: int = 0, phase_epoch: int = 0) -> None:
        """Train through `phases`, from epoch `phase_epoch` of phase `phase_index` on."""
        self.phases, self.stop_training = phases, False
        done_before = sum(p.epochs for p in phases[:phase_index]) + phase_epoch
        self.total_epochs = self.epoch - done_before + sum(p.epochs for p in phases)
        try:
            self._event("before_fit")
            for index in range(phase_index, len(phases)):
                self.phase_index = index
                self.freeze_to(phases[index].frozen_to)
                start = phase_epoch if index == phase_index else 0
                for epoch_in_phase in range(start, phases[index].epochs):
                    self.phase_epoch = epoch_in_phase
                    self._epoch(phases[index], epoch_in_phase)
                    if self.stop_training:
                        return
        except CancelFit:
            pass
        finally:
            self._event("after_fit")

    def _epoch(self, phase: Phase, epoch_in_phase: int) -> None:
        started = time.perf_counter()
        self.num_batches = self.batches_per_epoch()
        if hasattr(self.train_loader, "set_epoch"):
            self.train_loader.set_epoch(self.epoch)
        self._event("before_epoch")
        row: dict[str, float] = {"epoch": self.epoch + 1, "train_loss": self._train(phase)}
        self.history.append(row)
        if self.valid_loader is not None:
            self._event("before_validate")
            row.update(self.validate())
            self._event("after_validate")
        row["lr"] = self.learning_rates()[-1]
        row["time"] = round(time.perf_counter() - started, 3)
        self._event("after_epoch")
        self.stop_training = bool(distributed.broadcast_from_main(self.stop_training))
        self.epoch += 1
        if epoch_in_phase + 1 < phase.epochs:
            self.phase_epoch = epoch_in_phase + 1
        else:
            self.phase_index, self.phase_epoch = self.phase_index + 1, 0
        if self.out is not None and distributed.is_main_process():
            self.save_state(self.out / state.STATE_FILE)

    def _train(self, phase: Phase) -> float:
        """One epoch over the training loader; returns the mean training loss."""
        steps = self.steps_per_epoch()
        total_steps, step = max(phase.epochs * steps, 1), self.phase_epoch * steps
        weight_decay = self.weight_decay if phase.weight_decay is None else phase.weight_decay
        self._train_mode()
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum, count = torch.zeros((), device=self.device), 0
        for index, (x, y) in enumerate(self.train_loader):
            self.batch_index = index
            if self.batch_index % self.accumulate == 0:
                lrs, beta1 = phase.hyper_parameters(step, total_steps)
                optimizer.set_hyper(self.optimizer, lrs, beta1, weight_decay)
            last = self.batch_index + 1 == self.num_batches
            self.stepping = (self.batch_index + 1) % self.accumulate == 0 or last
            self._one_batch(x, y)
            step += self.stepping
            # Summed on the device: reading the loss every batch would make the CPU wait.
            size = batch_size(self.y)
            loss_sum, count = loss_sum + self.loss.float() * size, count + size
        self.batch_index = self.num_batches
        loss_total, count = distributed.sum_across([float(loss_sum), count])
        train_loss = loss_total / max(count, 1)
        finite.check_epoch(train_loss, self.model, self.epoch + 1)  # before the state is saved
        return train_loss

    def _one_batch(self, x: Any, y: Any) -> None:
        if self.channels_last is None:  # on a CPU: measured on the first batch (placement)
            self.channels_last = probe_learner_layout(self, (x, y))
        self.x, self.y = self._to_device(x), self._to_device(y)
        self._event("before_batch")
        model = self.parallel.module(self.x, self._call_model) or self._forward
        with self.parallel.exchange(self.stepping):
            self.pred = self._call_model(self.x, model)
            if self.config is None:  # a Learner given no config: its first batch completes one
                facts = {**self._facts, **autoconfig.batch_facts(self.x, self.pred)}
                self.config = autoconfig.infer_config(self.model, self.task, facts)
            self._event("after_pred")
            loss = self.task.loss(self.pred, self.y)
            self.loss, self.loss_grad = loss.detach(), loss / self.accumulate
            self._event("after_loss")
            self._event("before_backward")
            self.precision.backward(self.loss_grad)
        if self.stepping:
            self._event("before_step")
            self.precision.step(self.optimizer)
            self.optimizer.zero_grad(set_to_none=True)
            self._event("after_step")
        self._event("after_batch")

    def _to_device(self, value: Any) -> Any:
        return to_device(value, self.device, self.channels_last)

    def _call_model(self, x: Any, model: nn.Module | None = None) -> torch.Tensor:
        forward = self._forward if model is None else model
        with self.precision.autocast():
            return forward(*x) if isinstance(x, tuple | list) else forward(x)

    # -- evaluation ------------------------------------------------------------------------
    def _batches(self, loader: Iterable | None) -> Iterable:
        loader = self.valid_loader if loader is None else loader
        if loader is None:
            raise TorsoError("this Learner has no validation data")
        return loader

    def validate(self, loader: Iterable | None = None) -> dict[str, float]:
        """Loss and the task's metrics over `loader` (default: the validation loader); see
        `torso.train.evaluation.evaluate` (under torchrun, a shared-out loader counts once)."""
        batches, device = self._batches(loader), self.device
        options = {"call": self._call_model, "to_device": self._to_device, "device": device}
        return evaluate(self.model, batches, self.task, config=self.config, **options)

    def predictor(self) -> Predictor:
        """A `Predictor` over this Learner's model, task, config and device."""
        from torso.predictor import Predictor

        return Predictor(self.model, self.task, self.config, device=self.device)

    def get_preds(
        self, loader: Iterable | None = None, *, with_loss: bool = False, with_inputs: bool = False
    ) -> dict[str, Any]:
        """`Predictor.get_preds` over `loader` (default: the validation loader)."""
        batches = self._batches(loader)
        return self.predictor().get_preds(batches, with_loss=with_loss, with_inputs=with_inputs)

    def tta(self, loader: Iterable | None = None) -> dict[str, Any]:
        """`Predictor.tta` over `loader` (default: the validation loader)."""
        return self.predictor().tta(self._batches(loader))

    def predict(self, images: Any, *, tta: bool = False, batch_size: int = 32) -> list[dict]:
        """`Predictor.predict`: one record per image (a tensor or image paths)."""
        return self.predictor().predict(images, tta=tta, batch_size=batch_size)

    # -- saving and resuming ---------------------------------------------------------------
    def save_model(self, folder: str | os.PathLike) -> Path:
        """Save a loadable model folder (`model.safetensors` + `torso.json`); under torchrun only
        the main process writes it (the others return the same path)."""
        if not distributed.is_main_process():
            return Path(folder)
        autoconfig.check_saveable(self.model, self.task, self.config, inferred=self._inferred)
        finite.check_weights(self.model, f"so no model is saved to '{folder}'")
        return checkpoint.save_model(self.model, self.config, folder)

    def save_state(self, path: str | os.PathLike) -> None:
        """Write everything `resume` needs, atomically, to `path` (see `torso.train.state`)."""
        state.save_state(self, path)

    def resume(self, path: str | os.PathLike | None = None) -> None:
        """Continue training from a saved state (default `<out>/state.safetensors`)."""
        if path is None:
            if self.out is None:
                raise TorsoError("resume() needs a state file or a Learner with a run folder")
            path = self.out / state.STATE_FILE
        position = state.load_state(self, path)
        if position is not None:
            self.fit_phases(*position)

    # -- lr_find ---------------------------------------------------------------------------
    def lr_find(self, **options: Any) -> LRFindResult:
        """`torso.train.lr_find.lr_find` on the learner as it stands (to fine-tune a pretrained
        body, `freeze()` first, as `find_learning_rate` does); the plot goes to
        `<out>/lr_find.png` by default, written by the main process only."""
        from torso.train.lr_find import lr_find

        if options.get("plot") is None and self.out is not None:
            options["plot"] = self.out / "lr_find.png"
        if not distributed.is_main_process():
            options["plot"] = None
        return lr_find(self, **options)
