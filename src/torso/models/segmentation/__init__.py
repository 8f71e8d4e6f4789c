"""Segmentation models: a hook-free dynamic U-Net on any body, and the paper's 2015 U-Net."""

from torso.models.segmentation.dynamic_unet import (
    DynamicUnet,
    UnetBlock,
    UnetDecoder,
    sizes_that_work,
)
from torso.models.segmentation.unet2015 import (
    UNet2015,
    UNet2015Decoder,
    UNet2015Encoder,
    unet2015_output_size,
    unet2015_valid_sizes,
)

__all__ = [
    "DynamicUnet",
    "UNet2015",
    "UNet2015Decoder",
    "UNet2015Encoder",
    "UnetBlock",
    "UnetDecoder",
    "sizes_that_work",
    "unet2015_output_size",
    "unet2015_valid_sizes",
]
