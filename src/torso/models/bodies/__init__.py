"""Bodies: backbones cut into feature extractors that know their channels, strides and stats."""

from torso.models.bodies.body import Body, SequentialBody, adapt_stats
from torso.models.bodies.create import check_backbone_name, create_body, unknown_backbone_message
from torso.models.bodies.cut import auto_cut, cut_model, has_pool_type
from torso.models.bodies.first_conv import adapt_first_conv, adapt_weight
from torso.models.bodies.timm_body import TimmBody
from torso.models.bodies.torchvision_body import REGISTRY, torchvision_names
from torso.models.bodies.weights import read_state_dict

__all__ = [
    "REGISTRY",
    "Body",
    "SequentialBody",
    "TimmBody",
    "adapt_first_conv",
    "adapt_stats",
    "adapt_weight",
    "auto_cut",
    "check_backbone_name",
    "create_body",
    "cut_model",
    "has_pool_type",
    "read_state_dict",
    "torchvision_names",
    "unknown_backbone_message",
]
