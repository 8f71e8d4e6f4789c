"""The model side: bodies (backbones cut into feature extractors), heads, and the models made of
them (classifier, U-Nets, Siamese pairs).

`torso.models.create_model`, `param_groups`, `freeze`, ... are defined in `torso.models.model`
and imported from there on first use, so importing `torso.models.heads` does not load timm.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = (
    "NORM_TYPES",
    "count_parameters",
    "create_model",
    "feature_width",
    "freeze",
    "freeze_to",
    "param_groups",
    "set_frozen_norm_eval",
    "unfreeze",
)

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module("torso.models.model"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'torso.models' has no attribute {name!r}")
