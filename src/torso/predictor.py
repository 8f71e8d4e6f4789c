"""Prediction with a trained model: `Predictor` (model + task + run config, no optimiser), and
`torso.load(path)`, a saved model from `model.safetensors` + `torso.json`."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from torso.errors import TorsoError
from torso.tasks import get_task
from torso.tasks.base import Task
from torso.train import distributed
from torso.train.checkpoint import load_model
from torso.train.placement import stored_channels_last, to_device
from torso.train.precision import Precision, choose_precision

if TYPE_CHECKING:
    from torso.train.learner import Learner


def config_value(config: Any, name: str, default: Any = None) -> Any:
    """Field `name` of a run config, whether a `RunConfig`, a plain dict, or None."""
    if config is None:
        return default
    if isinstance(config, Mapping):
        return config.get(name, default)
    return getattr(config, name, default)


class Predictor:
    """Runs `model` on images or loaders and decodes its outputs with `task`.

    Args:
        model: the trained model (moved to `device`; inputs follow its weights' memory format).
        task: from `torso.tasks.get_task`; owns activation, loss and decoding.
        config: the run config (classes, image size, channels, resize mode); may be None when
            only tensors are predicted.
        device: default CUDA when available, else CPU; under torchrun this process's GPU.
    """

    def __init__(
        self,
        model: nn.Module,
        task: Task,
        config: Any = None,
        *,
        device: str | torch.device | None = None,
    ) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device)
        self.channels_last = stored_channels_last(self.model)  # inputs as the weights are stored
        self.task = task
        self.config = config
        self.precision = Precision(choose_precision(None, self.device), self.device)

    def _to_device(self, value: Any) -> Any:
        return to_device(value, self.device, self.channels_last)

    def _call_model(self, x: Any) -> torch.Tensor:
        with self.precision.autocast():
            return self.model(*x) if isinstance(x, tuple | list) else self.model(x)

    @torch.no_grad()
    def get_preds(
        self, loader: Iterable | None = None, *, with_loss: bool = False, with_inputs: bool = False
    ) -> dict[str, torch.Tensor]:
        """Activations (probabilities or values), targets and optionally per-sample losses and
        the inputs over `loader` (batches `(x, y)`), all on the CPU.

        Returns a dict with `"activations"` (N, ...), `"targets"` (N, ...), and `"losses"` (N,)
        and `"inputs"` (N, C, H, W) when asked for. Under torchrun, a loader shared out among the
        processes (`ShardSampler`) is gathered: every process gets all N rows, in the loader's
        order.
        """
        batches = _needs_loader(loader)
        shared = distributed.measured_together(batches, self.model)
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
        batches = _needs_loader(loader)
        shared = distributed.measured_together(batches, self.model)
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
        classes = config_value(self.config, "classes")
        return self.task.describe(activations, list(classes) if classes is not None else None)

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
        size = config_value(self.config, "size")
        if size is None:
            raise TorsoError("this model's config has no image size; pass a tensor instead")
        from torso.data import load_images

        if isinstance(size, list | tuple):
            size = size[0]
        channels = int(config_value(self.config, "in_channels", 3))
        resize = config_value(self.config, "resize", "squish")
        return load_images(paths, size, channels, resize=resize)


def _needs_loader(loader: Iterable | None) -> Iterable:
    if loader is None:
        raise TorsoError("no data to predict on: pass a loader")
    return loader


def load(path: str | os.PathLike, *, device: str | torch.device | None = None) -> Learner:
    """Load the model saved in folder `path` (a run folder or its `best/`) as a Learner without
    data: `torso.load("runs/pets").predict(["cat.jpg"])`.

    The architecture is rebuilt by the task from `torso.json`; weights come from safetensors;
    nothing is unpickled. A missing, truncated or altered file raises `TorsoError`.
    """
    from torso.train.learner import Learner

    model, config = load_model(path)
    task = get_task(config["task"], **(config.get("task_options") or {}))
    return Learner(model, task=task, config=config, device=device or "cpu")
