"""torso: every vision model is a pretrained body plus a task head.

>>> import torso
>>> model = torso.create_model("resnet34", num_outputs=37)   # head(body(images))
>>> body = model.body; body.channels, body.reductions, body.stats
>>> predictor = torso.load("runs/pets")                     # a trained run, without pickle
>>> predictor.predict(["cat.jpg"]); predictor.model; predictor.config

The names below are imported on first use, so `import torso.data` or `torso check` do not pay
for loading timm.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from torso.version import __version__

# public name -> module that defines it
_EXPORTS = {
    "Body": "torso.models.bodies",
    "create_body": "torso.models.bodies",
    "create_head": "torso.models.heads",
    "create_model": "torso.models",
    "freeze": "torso.models",
    "freeze_to": "torso.models",
    "param_groups": "torso.models",
    "unfreeze": "torso.models",
    "Learner": "torso.train.learner",
    "Predictor": "torso.predictor",
    "RunConfig": "torso.config",
    "load_data": "torso.data",
}

__all__ = ["__version__", "load", *_EXPORTS]

if TYPE_CHECKING:  # pragma: no cover
    from torso.config import RunConfig  # noqa: F401
    from torso.data import load_data  # noqa: F401
    from torso.models import create_model, freeze, freeze_to, param_groups, unfreeze  # noqa: F401
    from torso.models.bodies import Body, create_body  # noqa: F401
    from torso.models.heads import create_head  # noqa: F401
    from torso.predictor import Predictor  # noqa: F401
    from torso.train.learner import Learner  # noqa: F401


def load(path: Any, *, device: Any = None):
    """Rebuild a trained model from a run folder (or its `best/`), ready to predict.

    Returns a `torso.predictor.Predictor`: `.model` (the `nn.Module` with its weights, eval
    mode), `.task`, `.config` (the run's `RunConfig`: task, backbone, classes, size, stats, ...),
    `.predict(images)`, `.get_preds(loader)`, `.tta(loader)`; no optimiser, no data. The
    architecture is rebuilt from JSON and the weights read from safetensors: nothing is
    unpickled. `torso.checkpoint.load_model(path)` gives `(model, config)` alone.
    """
    from torso.predictor import load as load_predictor

    return load_predictor(path, device=device)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'torso' has no attribute {name!r}")
