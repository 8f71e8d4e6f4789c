"""Pretrained weights: local files, adaptation to other channel counts, and failing fast offline."""

import socket
import time

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

from torso.errors import TorsoError, WeightsUnavailableError
from torso.models.bodies import create_body


@pytest.fixture
def timm_file(tmp_path):
    source = timm.create_model("test_resnet", num_classes=10)
    path = tmp_path / "test_resnet.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    return source, path


def test_local_safetensors_loads_every_body_tensor(timm_file):
    source, path = timm_file
    body = create_body("test_resnet", pretrained=path)
    torch.testing.assert_close(body.model.layer3[0].conv1.weight, source.layer3[0].conv1.weight)
    torch.testing.assert_close(body.model.bn1.running_mean, source.bn1.running_mean)


def test_pretrained_one_and_four_channels_adapt_the_loaded_kernel(timm_file):
    source, path = timm_file
    rgb = source.conv1[0].weight  # test_resnet has a deep stem: conv1 is a Sequential
    one = create_body("test_resnet", pretrained=path, in_channels=1)
    torch.testing.assert_close(one.model.conv1[0].weight, rgb.sum(dim=1, keepdim=True))
    four = create_body("test_resnet", pretrained=path, in_channels=4)
    expected = torch.cat([rgb, rgb[:, :1]], dim=1) * 3 / 4
    torch.testing.assert_close(four.model.conv1[0].weight, expected)
    assert four.eval()(torch.rand(1, 4, 32, 32)).shape[1] == 96


def test_torchvision_weights_only_torch_file(tmp_path):
    source = torchvision.models.resnet18(num_classes=1000)
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": source.state_dict()}, path)
    body = create_body("tv:resnet18", pretrained=path, in_channels=1)
    torch.testing.assert_close(body.layers.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    torch.testing.assert_close(
        body.layers.conv1.weight, source.conv1.weight.sum(dim=1, keepdim=True)
    )


class NotWeights:
    pass


def test_file_with_arbitrary_objects_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"payload": NotWeights()}, path)
    with pytest.raises(TorsoError, match="evil.pth"):
        create_body("test_resnet", pretrained=path)


def test_weights_of_another_backbone_are_refused(timm_file):
    _, path = timm_file
    with pytest.raises(TorsoError, match="test_resnet.safetensors"):
        create_body("test_convnext", pretrained=path)


def test_missing_and_truncated_files_name_the_file(tmp_path, timm_file):
    with pytest.raises(TorsoError, match="does not exist"):
        create_body("test_resnet", pretrained=tmp_path / "nope.safetensors")
    _, path = timm_file
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(TorsoError, match="cut.safetensors"):
        create_body("test_resnet", pretrained=truncated)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    import huggingface_hub.constants

    def no_dns(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch"))


@pytest.mark.parametrize("name", ["test_resnet", "tv:resnet18"])
def test_offline_hub_fails_fast_and_says_how_to_pass_a_file(offline, name):
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match="pretrained='weights.safetensors'") as info:
        create_body(name, pretrained=True)
    assert time.monotonic() - start < 10
    assert name in str(info.value)


def test_timm_name_with_cut_keeps_the_pretrained_weights(timm_file):
    source, path = timm_file
    body = create_body("test_resnet", pretrained=path, cut=-2)  # children up to layer4
    torch.testing.assert_close(body.layers.conv1[0].weight, source.conv1[0].weight)
    torch.testing.assert_close(body.layers.layer4[0].conv1.weight, source.layer4[0].conv1.weight)
    grey = create_body("test_resnet", pretrained=path, in_channels=1, cut=-2)
    torch.testing.assert_close(
        grey.layers.conv1[0].weight, source.conv1[0].weight.sum(dim=1, keepdim=True)
    )
