"""Bodies: backbones cut into feature extractors that know their channels, strides and stats."""

from torso.bodies.body import Body, SequentialBody, adapt_stats
from torso.bodies.create import create_body, unknown_backbone_message
from torso.bodies.cut import auto_cut, cut_model, has_pool_type
from torso.bodies.first_conv import adapt_first_conv, adapt_weight
from torso.bodies.timm_body import TimmBody
from torso.bodies.torchvision_body import REGISTRY, torchvision_names
from torso.bodies.weights import read_state_dict

__all__ = [
    "REGISTRY",
    "Body",
    "SequentialBody",
    "TimmBody",
    "adapt_first_conv",
    "adapt_stats",
    "adapt_weight",
    "auto_cut",
    "create_body",
    "cut_model",
    "has_pool_type",
    "read_state_dict",
    "torchvision_names",
    "unknown_backbone_message",
]
