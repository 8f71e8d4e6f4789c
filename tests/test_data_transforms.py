"""Joint transforms: the mask follows the image through every augmentation; resize modes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torso.data.transforms import Augmentation, augment, resize_square, sample_generator


def _shape_and_mask(side: int = 80) -> tuple[torch.Tensor, torch.Tensor]:
    """A black image with a white L-shape off the centre (so a flip shows), and its mask."""
    mask = torch.zeros(1, side, side, dtype=torch.uint8)
    mask[0, 10:50, 12:26] = 1
    mask[0, 36:50, 12:60] = 1
    image = (mask * 255).repeat(3, 1, 1)
    return image, mask


@pytest.mark.parametrize("seed", range(12))
def test_mask_stays_aligned_with_the_shape(seed):
    image, mask = _shape_and_mask()
    settings = Augmentation(p_affine=1.0, max_rotate=30.0, max_warp=0.3, p_lighting=0.0)
    out_image, out_mask = augment(image, 64, settings, sample_generator(seed, 0, 0), mask)
    assert out_image.shape == (3, 64, 64) and out_mask.shape == (1, 64, 64)
    bright = out_image[0] > 127
    inside = out_mask[0] == 1
    union = (bright | inside).sum().item()
    assert union > 200  # the shape is still in view
    assert (bright & inside).sum().item() / union > 0.9
    outside_view = out_mask[0] == 255  # pixels the rotation/warp brought in from outside
    assert (out_image[:, outside_view] == 0).all()
    assert set(out_mask.unique().tolist()) <= {0, 1, 255}


def test_augmentations_depend_on_seed_epoch_and_index_only():
    image, mask = _shape_and_mask()
    settings = Augmentation()
    first = augment(image, 64, settings, sample_generator(3, 5, 7), mask)
    again = augment(image, 64, settings, sample_generator(3, 5, 7), mask)
    other = augment(image, 64, settings, sample_generator(3, 6, 7), mask)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])


def test_flip_moves_image_and_mask_together():
    image, mask = _shape_and_mask()
    settings = Augmentation(p_affine=0.0, p_lighting=0.0, min_scale=1.0)
    flipped = [s for s in range(40) if sample_generator(s, 0, 0).random(16)[4] < 0.5][
        0
    ]  # a seed whose draw flips
    out_image, out_mask = augment(image, 80, settings, sample_generator(flipped, 0, 0), mask)
    crop_is_full = torch.equal(out_mask[0].flip(-1)[10:50, 12:26], mask[0, 10:50, 12:26])
    assert crop_is_full  # flipped back it is the original L
    assert torch.equal(out_image[0] > 127, out_mask[0] == 1)


@pytest.mark.parametrize(
    ("mode", "expected_box"),
    [
        ("squish", (0, 32, 0, 32)),  # the whole 64x32 image fills the square
        ("crop", (0, 32, 0, 32)),  # the centre 32x32 of the 64x32 image
        ("pad", (8, 24, 0, 32)),  # 32x16 in the middle, bands of padding above and below
    ],
)
def test_resize_modes(mode, expected_box):
    image = torch.full((3, 32, 64), 200, dtype=torch.uint8)
    mask = torch.ones(1, 32, 64, dtype=torch.uint8)
    out_image, out_mask = resize_square(image, 32, mode, mask, ignore_index=255)
    assert out_image.shape == (3, 32, 32) and out_mask.shape == (1, 32, 32)
    top, bottom, left, right = expected_box
    assert (out_image[:, top:bottom, left:right] == 200).all()
    assert (out_mask[0, top:bottom, left:right] == 1).all()
    assert (out_image == 200).sum().item() == 3 * (bottom - top) * (right - left)
    assert ((out_mask == 255).sum().item() == 0) == (mode != "pad")


def test_lighting_changes_values_not_geometry():
    image = torch.from_numpy(np.tile(np.arange(64, dtype=np.uint8) * 3, (3, 64, 1)))
    settings = Augmentation(flip=False, p_affine=0.0, p_lighting=1.0, min_scale=1.0)
    out, _ = augment(image, 64, settings, sample_generator(0, 0, 0))
    assert out.dtype == torch.uint8 and not torch.equal(out, image)
    assert (out[0, :, 1:].int() >= out[0, :, :-1].int()).all()  # still increases left to right
