"""`Predictor`: a trained model, its task and its run config, ready to predict; `torso.load`.

A Predictor holds no optimiser and no data: `predict(images)` prepares any images as validation
did (`torso.data.prepare.prepare_images`) and returns the task's records (class names, not
numbers); `get_preds(loader)` and `tta(loader)` measure a loader of `(x, y)` batches. Under
torchrun, a loader shared out among the processes (`torso.distributed.ShardSampler`) is
gathered back in order, as the Learner does; a Predictor never creates a process group.

    predictor = torso.load("runs/pets")          # model.safetensors + torso.json, no pickle
    predictor.predict(["cat.jpg"])              # [{"prediction": "Abyssinian", ...}]
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torso.config import RunConfig, as_run_config
from torso.errors import TorsoError
from torso.tasks.base import Task


class Predictor:
    """Model + task + run config: `predict`, `get_preds`, `tta`.

    Args:
        model: the trained `nn.Module` (body + head); put in eval mode when predicting.
        task: from `torso.tasks.get_task`: activation, decoding, records, TTA undo.
        config: the run's `RunConfig` (or its `torso.json` dict): size, channels, classes.
        device: where the model runs; default: where its parameters already are.
    """

    def __init__(
        self,
        model: nn.Module,
        task: Task,
        config: RunConfig | Mapping[str, Any],
        *,
        device: str | torch.device | None = None,
    ) -> None:
        self.config = as_run_config(config)
        self.task = task
        if device is None:
            parameter = next(model.parameters(), None)
            self.device = parameter.device if parameter is not None else torch.device("cpu")
        else:
            self.device = choose_device(device)
        self.model = model.to(self.device)

    def __repr__(self) -> str:
        return f"Predictor({self.config.task}, {self.config.backbone}, on {self.device})"

    # -- images --------------------------------------------------------------------------
    @torch.no_grad()
    def activations(self, images: Any, *, tta: bool = False, batch_size: int = 32) -> torch.Tensor:
        """The task's activations (probabilities or values) for `images`, on the CPU.

        images: anything `prepare_images` takes; a task with `images_per_sample = 2` takes the
        images in consecutive pairs (A1, B1, A2, B2, ...) and gives one row per pair.
        """
        from torso.data.prepare import prepare_images

        if batch_size < 1:
            raise TorsoError(f"batch_size must be at least 1, got {batch_size}")
        batch = prepare_images(self.config, images)
        group = self.task.images_per_sample
        if len(batch) % group:
            raise TorsoError(
                f"a {self.config.task} model takes images {group} at a time; got {len(batch)}"
            )
        samples = batch.reshape(len(batch) // group, group, *batch.shape[1:])
        results = []
        for start in range(0, len(samples), batch_size):
            chunk = samples[start : start + batch_size].to(self.device)
            x = chunk[:, 0] if group == 1 else tuple(chunk[:, i] for i in range(group))
            results.append(self._activations(x, tta).cpu())
        return torch.cat(results)

    def predict(self, images: Any, *, tta: bool = False, batch_size: int = 32) -> list[dict]:
        """One record per image (per pair for pair models) from the task, e.g.
        `{"prediction": "cat", "probability": 0.97}`.

        images: a path, a PIL image, a numpy array, a tensor `(C, H, W)` or `(N, C, H, W)`, or a
        list of these; prepared as validation prepares them. `tta` averages each image's
        activations with those of its mirror image. A segmentation model gives each image's
        mask at the image's own size: `{"mask": uint8 (H, W), "classes": [...], "shares": {...}}`
        (see `torso.tasks.segment.SegmentTask.describe`).
        """
        return self.task.predict_records(self, images, tta=tta, batch_size=batch_size)

    def explain(
        self,
        images: Any,
        *,
        target: int | str | Sequence[int | str] | torch.Tensor | None = None,
        batch_size: int = 32,
    ) -> torch.Tensor:
        """Class activation maps (Grad-CAM) of `images`: float32 `(N, H, W)` on the CPU at the
        model's input size (`config.size`), each scaled to [0, 1] by its own maximum (a map
        that is zero everywhere stays zero). A single image gives `N = 1`.

        images: as `predict` takes them, prepared as validation prepares them.
        target: the class to explain, by index or name, for every image, or a list (or an
            int tensor) of one per image; default: each image's predicted class
            (classification) or its most probable label (multi-label). The task decides
            whether a map means anything: other tasks raise `torso.errors.NotExplainableError`.
        The model's parameters get no gradients (`.grad` stays None).
        """
        from torso.data.prepare import prepare_images

        if batch_size < 1:
            raise TorsoError(f"batch_size must be at least 1, got {batch_size}")
        batch = prepare_images(self.config, images)
        classes = self._target_classes(target, len(batch))
        maps = []
        for start in range(0, len(batch), batch_size):
            chunk = batch[start : start + batch_size].to(self.device)
            chosen = None if classes is None else classes[start : start + batch_size]
            maps.append(self.task.activation_maps(self.model, chunk, chosen).float().cpu())
        return torch.cat(maps)

    def _target_classes(self, target: Any, count: int) -> torch.Tensor | None:
        """`explain`'s `target` as class indices int64 `(count,)`, or None (the predicted)."""
        if target is None:
            return None
        if isinstance(target, torch.Tensor):
            target = target.tolist()  # a 0-d tensor gives one int
        targets = [target] * count if isinstance(target, int | str) else list(target)
        if len(targets) != count:
            raise TorsoError(
                f"target: give one class or one per image ({count}), not {len(targets)}"
            )
        names = self.config.class_names()
        indices = []
        for item in targets:
            if isinstance(item, str) and item in names:
                indices.append(names.index(item))
            elif isinstance(item, int) and not isinstance(item, bool) and 0 <= item < len(names):
                indices.append(item)
            else:
                raise TorsoError(
                    f"target {item!r} is not a class of this model: give an index below "
                    f"{len(names)} or one of {', '.join(names)}"
                )
        return torch.tensor(indices, dtype=torch.int64)

    # -- loaders -------------------------------------------------------------------------
    @torch.no_grad()
    def get_preds(
        self, loader: Iterable | None = None, *, with_loss: bool = False, with_inputs: bool = False
    ) -> dict[str, Any]:
        """Activations, targets and optionally per-sample losses and the inputs over `loader`
        (batches `(x, y)`), all on the CPU.

        Returns `"activations"` (N, ...), `"targets"` (N, ...), and `"losses"` (N,) and
        `"inputs"` (N, C, H, W; the first image of a pair) when asked for. Targets that are not
        one tensor a batch (detection: a dict of boxes and labels per image) come as a list of
        N such dicts. Under torchrun a loader shared out among the processes is gathered:
        every process gets all N rows, in the loader's order.
        """
        batches = self._loader(loader)
        shared = self._measured_together(batches)
        self.model.eval()
        parts: dict[str, list[Any]] = {"activations": [], "targets": []}
        if with_loss:
            parts["losses"] = []
        if with_inputs:
            parts["inputs"] = []
        for x, y in batches:
            xd, yd = self._to_device(x), self._to_device(y)
            outputs = self._call(xd)
            parts["activations"].append(self.task.activation(outputs).cpu())
            parts["targets"].append(_cpu(y))
            if with_loss:
                parts["losses"].append(self.task.loss(outputs, yd, reduction="none").float().cpu())
            if with_inputs:
                parts["inputs"].append(x.cpu() if isinstance(x, torch.Tensor) else x[0].cpu())
        return self._finish(parts, shared)

    @torch.no_grad()
    def tta(self, loader: Iterable | None = None) -> dict[str, Any]:
        """Test-time augmentation over `loader`: each sample's activations averaged with those
        of its mirror image (put back by `task.undo_flip`). Returns `{"activations",
        "targets"}` as `get_preds` does (gathered likewise)."""
        batches = self._loader(loader)
        shared = self._measured_together(batches)
        parts: dict[str, list[Any]] = {"activations": [], "targets": []}
        for x, y in batches:
            parts["activations"].append(self._activations(self._to_device(x), True).cpu())
            parts["targets"].append(_cpu(y))
        return self._finish(parts, shared)

    # -- inside --------------------------------------------------------------------------
    def _activations(self, x: Any, tta: bool) -> torch.Tensor:
        self.model.eval()
        plain = self.task.activation(self._call(x))
        if not tta:
            return plain
        mirrored_x = tuple(item.flip(-1) for item in x) if isinstance(x, tuple) else x.flip(-1)
        mirrored = self.task.undo_flip(self.task.activation(self._call(mirrored_x)))
        return (plain + mirrored) / 2

    def _call(self, x: Any) -> torch.Tensor:
        return self.model(*x) if isinstance(x, tuple | list) else self.model(x)

    def _to_device(self, value: Any) -> Any:
        if isinstance(value, tuple | list):
            return type(value)(self._to_device(item) for item in value)
        if isinstance(value, torch.Tensor):
            return value.to(self.device)
        return value

    def _loader(self, loader: Iterable | None) -> Iterable:
        if loader is None:
            raise TorsoError("give the loader of (images, targets) batches to measure")
        return loader

    def _measured_together(self, loader: Iterable) -> bool:
        """Whether all processes of a torchrun launch measure `loader` together, each its own
        share (then every process must make the call)."""
        from torso import distributed

        shared = distributed.is_distributed() and isinstance(
            getattr(loader, "sampler", None), distributed.ShardSampler
        )
        if shared:
            distributed.broadcast_buffers(self.model)
        return shared

    @staticmethod
    def _finish(parts: dict[str, list[Any]], shared: bool) -> dict[str, Any]:
        """Each part's batches joined: tensors concatenated, lists of per-sample objects (a
        detection's targets) chained; under torchrun gathered from every process in order."""
        from torso import distributed

        if not parts["activations"]:
            raise TorsoError("the loader yields no batches")
        results: dict[str, Any] = {}
        for key, values in parts.items():
            if isinstance(values[0], list):
                joined = [item for batch in values for item in batch]
                results[key] = distributed.gather_objects_in_order(joined) if shared else joined
            else:
                joined = torch.cat(values)
                results[key] = distributed.gather_in_order(joined) if shared else joined
        return results


#: Device types a model can be moved to and run on, and how to ask whether one is present.
_DEVICE_CHECKS = {
    "cpu": lambda: True,
    "cuda": lambda: torch.cuda.is_available(),
    "mps": lambda: torch.backends.mps.is_available(),
    "xpu": lambda: hasattr(torch, "xpu") and torch.xpu.is_available(),
}


def choose_device(device: str | torch.device, option: str = "device") -> torch.device:
    """`device` ("cpu", "cuda", "cuda:1", "mps", ...) as a `torch.device` that this machine has.

    A name torch does not know, a device type nothing can run on (`meta`), or a GPU this
    machine lacks is a `TorsoError` naming `option` (`--device` on the command line).
    """
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise TorsoError(
            f"{option} '{device}' is not a device: give cpu, cuda, cuda:N or mps"
        ) from None
    available = _DEVICE_CHECKS.get(chosen.type)
    if available is None:
        raise TorsoError(f"{option} '{device}': torso runs models on {', '.join(_DEVICE_CHECKS)}")
    if not available():
        raise TorsoError(f"{option} '{device}': this machine has no {chosen.type} device; use cpu")
    if chosen.type == "cuda" and chosen.index is not None:
        count = torch.cuda.device_count()
        if chosen.index >= count:
            raise TorsoError(f"{option} '{device}': this machine has {count} CUDA device(s)")
    return chosen


def _cpu(value: Any) -> torch.Tensor | list[dict[str, Any]]:
    """A batch's targets on the CPU: a tensor, or a list of per-sample dicts (detection: boxes
    and labels, a different number for each image) with each tensor in them moved."""
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, list | tuple) and value and isinstance(value[0], Mapping):
        return [
            {key: v.cpu() if isinstance(v, torch.Tensor) else v for key, v in item.items()}
            for item in value
        ]
    return torch.as_tensor(value)


def load(path: str | os.PathLike, *, device: str | torch.device | None = None) -> Predictor:
    """The model saved in folder `path` (a run folder or its `best/`) as a `Predictor`:
    `torso.load("runs/pets").predict(["cat.jpg"])`.

    The architecture is rebuilt by the task from `torso.json`, the weights come from
    safetensors; nothing is unpickled. A missing, truncated or altered file raises `TorsoError`.
    `device` defaults to the CPU.
    """
    from torso.checkpoint import load_model
    from torso.tasks import get_task

    model, config = load_model(Path(path))
    task = get_task(config.task, **config.task_options)
    return Predictor(model, task, config, device=device or "cpu")
