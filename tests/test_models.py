"""create_model, parameter groups and freezing."""

import pytest
import torch
from torch import nn

import torso
from torso.errors import TorsoError
from torso.models import BodyHeadModel, param_groups, set_frozen_norm_eval


def count(params):
    return sum(p.numel() for p in params)


@pytest.mark.parametrize("name", ["resnet34", "tv:resnet34"])
def test_resnet34_parity_with_fastai(name):
    model = torso.create_model(name, 10)
    assert isinstance(model, BodyHeadModel) and not isinstance(model, nn.Sequential)
    assert count(model.parameters()) == 21_817_152
    assert count(model.body.parameters()) == 21_284_672
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
    assert model.head[2].num_features == 2 * 1280  # conv_head's 1280 channels, concat-pooled


def trainable(module):
    return {id(p) for p in module.parameters() if p.requires_grad}


def test_freeze_trains_head_and_body_norms_by_default():
    model = torso.create_model("test_resnet", 4)
    torso.freeze(model)
    norms = {
        id(p) for m in model.body.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()
    }
    assert trainable(model.body) == norms and norms
    assert trainable(model.head) == {id(p) for p in model.head.parameters()}
    torso.unfreeze(model)
    assert trainable(model) == {id(p) for p in model.parameters()}


def test_freeze_without_train_bn_freezes_norm_statistics_too():
    model = torso.create_model("test_resnet", 4)
    torso.freeze(model, train_bn=False)
    assert trainable(model.body) == set()
    bn = model.body.model.bn1
    before = bn.running_mean.clone()
    model.train()
    set_frozen_norm_eval(model)
    model(torch.rand(4, 3, 32, 32) * 5)
    torch.testing.assert_close(bn.running_mean, before)
    assert model.head[2].training  # the head's BatchNorm still trains


def test_freeze_to_middle_group():
    model = torso.create_model("tv:resnet18", 2)
    torso.freeze_to(model, 1, train_bn=False)
    groups = param_groups(model)
    assert not any(p.requires_grad for p in groups[0])
    assert all(p.requires_grad for g in groups[1:] for p in g)


def test_timm_norms_that_are_not_torch_classes_keep_training_with_train_bn():
    # test_vit4 normalises with timm's RmsNorm, which no PyTorch norm class is a base of.
    model = torso.create_model("test_vit4", 3)
    rms = [m for m in model.body.modules() if type(m).__name__ == "RmsNorm"]
    assert rms and not any(isinstance(m, torso.models.NORM_TYPES) for m in rms)
    torso.freeze(model)
    norm_params = {id(p) for m in rms for p in m.parameters()}
    assert norm_params and norm_params <= trainable(model.body)
    torso.freeze(model, train_bn=False)
    assert not norm_params & trainable(model)


def test_a_model_without_body_and_head_needs_a_splitter():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())
    with pytest.raises(TorsoError, match="splitter"):
        param_groups(model)
    with pytest.raises(TorsoError, match=r"no \.body and \.head"):
        torso.freeze(model)


def test_param_groups_look_through_the_compile_wrapper():
    model = torso.create_model("test_resnet", 2)
    compiled = torch.compile(model)
    assert [len(g) for g in param_groups(compiled)] == [len(g) for g in param_groups(model)]


def test_old_checkpoints_with_sequential_keys_still_load(tmp_path):
    from torso.checkpoint import load_model, save_model

    model = torso.create_model("test_resnet", 3).eval()
    old = nn.Sequential(model.body, model.head)  # how models were built before .body/.head
    assert next(iter(old.state_dict())).startswith("0.")
    config = {"task": "classify", "backbone": "test_resnet", "num_outputs": 3, "size": 32}
    save_model(old, config, tmp_path)
    loaded, _ = load_model(tmp_path)
    assert isinstance(loaded, BodyHeadModel)
    images = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(loaded(images), model(images))


def test_upgrade_state_dict_renames_only_the_two_parts():
    state = {"0.conv.weight": 1, "1.2.bias": 2, "body.x": 3, "head.1.y": 4, "10.z": 5}
    assert torso.models.upgrade_state_dict(state) == {
        "body.conv.weight": 1,
        "head.2.bias": 2,
        "body.x": 3,
        "head.1.y": 4,
        "10.z": 5,
    }
