"""The model side: bodies (backbones cut into feature extractors), heads, and the models made of
them (classifier, U-Nets, Siamese pairs).

`torso.models.create_model`, `param_groups`, `freeze`, ... are defined in `torso.models.model`
(`NORM_TYPES` and `is_norm_layer` in `torso.models.norm`) and imported from there on first use,
so importing `torso.models.heads` does not load timm.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = (
    "BodyHeadModel",
    "body_and_head",
    "count_parameters",
    "create_model",
    "feature_width",
    "freeze",
    "freeze_to",
    "param_groups",
    "set_frozen_norm_eval",
    "unfreeze",
    "upgrade_state_dict",
)
_NORM_EXPORTS = ("NORM_TYPES", "is_norm_layer")

__all__ = [*_EXPORTS, *_NORM_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS or name in _NORM_EXPORTS:
        module = "torso.models.model" if name in _EXPORTS else "torso.models.norm"
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'torso.models' has no attribute {name!r}")
