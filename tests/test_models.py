"""create_model, parameter groups and freezing."""

import pytest
import torch
from torch import nn

import torso
from torso.models import param_groups, set_frozen_norm_eval


def count(params):
    return sum(p.numel() for p in params)


@pytest.mark.parametrize("name", ["resnet34", "tv:resnet34"])
def test_resnet34_parity_with_fastai(name):
    model = torso.create_model(name, 10)
    assert isinstance(model, nn.Sequential) and len(model) == 2
    assert count(model.parameters()) == 21_817_152
    assert count(model[0].parameters()) == 21_284_672
    assert [count(g) for g in param_groups(model)] == [1_347_904, 19_936_768, 532_480]


@pytest.mark.parametrize(
    "name", ["test_resnet", "test_convnext", "test_vit", "tv:mobilenet_v3_small", "tv:vgg11_bn"]
)
def test_every_parameter_in_exactly_one_group(name):
    model = torso.create_model(name, 5)
    groups = param_groups(model)
    assert len(groups) >= 3
    ids = [id(p) for g in groups for p in g]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert model(torch.rand(2, 3, 64, 64)).shape == (2, 5)


def test_head_width_comes_from_the_body():
    model = torso.create_model("tf_efficientnet_lite0", 3)
    assert model[1][2].num_features == 2 * 1280  # conv_head's 1280 channels, concat-pooled


def trainable(module):
    return {id(p) for p in module.parameters() if p.requires_grad}


def test_freeze_trains_head_and_body_norms_by_default():
    model = torso.create_model("test_resnet", 4)
    torso.freeze(model)
    norms = {
        id(p) for m in model[0].modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()
    }
    assert trainable(model[0]) == norms and norms
    assert trainable(model[1]) == {id(p) for p in model[1].parameters()}
    torso.unfreeze(model)
    assert trainable(model) == {id(p) for p in model.parameters()}


def test_freeze_without_train_bn_freezes_norm_statistics_too():
    model = torso.create_model("test_resnet", 4)
    torso.freeze(model, train_bn=False)
    assert trainable(model[0]) == set()
    bn = model[0].model.bn1
    before = bn.running_mean.clone()
    model.train()
    set_frozen_norm_eval(model)
    model(torch.rand(4, 3, 32, 32) * 5)
    torch.testing.assert_close(bn.running_mean, before)
    assert model[1][2].training  # the head's BatchNorm still trains


def test_freeze_to_middle_group():
    model = torso.create_model("tv:resnet18", 2)
    torso.freeze_to(model, 1, train_bn=False)
    groups = param_groups(model)
    assert not any(p.requires_grad for p in groups[0])
    assert all(p.requires_grad for g in groups[1:] for p in g)
