"""Weights shipped by an installed package: tf_efficientnet_lite0 recognises real photos."""

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from skimage import data

from torso.models.bodies import create_body
from torso.models.bodies.packaged import packaged_file, packaged_state

EGYPTIAN_CAT, TIGER_CAT, TABBY, ESPRESSO = 285, 282, 281, 967


def photo(array: np.ndarray) -> torch.Tensor:
    image = Image.fromarray(array).resize((224, 224), Image.BICUBIC)
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div(255)[None]


@pytest.fixture(scope="module")
def classifier():
    assert packaged_file("tf_efficientnet_lite0") is not None, "install the demo extra"
    model = timm.create_model("tf_efficientnet_lite0").eval()
    state, _ = packaged_state("tf_efficientnet_lite0", model)
    model.load_state_dict(state, strict=True)  # every renamed tensor has its place
    return model


@pytest.mark.parametrize(
    ("name", "classes"), [("chelsea", {EGYPTIAN_CAT, TIGER_CAT, TABBY}), ("coffee", {ESPRESSO})]
)
def test_top1_on_real_photos(classifier, name, classes):
    images = (photo(getattr(data, name)()) - 0.5) / 0.5  # the weights' mean = std = 0.5
    with torch.no_grad():
        top1 = classifier(images).argmax(dim=1).item()
    assert top1 in classes


def test_pretrained_true_uses_the_package_before_the_hub(classifier):
    body = create_body("tf_efficientnet_lite0", pretrained=True).eval()
    torch.testing.assert_close(body.model.conv_head.weight, classifier.conv_head.weight)
    torch.testing.assert_close(
        body.model.blocks[3][1].conv_dw.weight, classifier.blocks[3][1].conv_dw.weight
    )
    # The body normalises [0, 1] images itself: its final map equals the classifier's features.
    images = photo(data.chelsea())
    with torch.no_grad():
        torch.testing.assert_close(body(images), classifier.forward_features((images - 0.5) / 0.5))
