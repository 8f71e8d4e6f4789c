"""`torso.tools.export` and `torso export`: ONNX and TorchScript files that match PyTorch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from torso.checkpoint import save_model
from torso.cli import main
from torso.config import RunConfig
from torso.errors import TorsoError
from torso.tasks import get_task
from torso.tools.export import export_model, export_run

onnxruntime = pytest.importorskip("onnxruntime")


def saved_run(folder, task_name: str, num_outputs: int, size: int, **task_options):
    """A run folder with a random-weight model of `task_name` on `test_resnet`."""
    task = get_task(task_name, **task_options)
    classes = [f"class{i}" for i in range(num_outputs)]
    config = RunConfig(
        task.name, "test_resnet", num_outputs, size, classes=classes, task_options=task.options
    )
    torch.manual_seed(0)
    model = task.build_model(config).eval()
    config = config.replace(stats=model.body.stats)
    save_model(model, config, folder)
    return model, config


def run_onnx(path, images: torch.Tensor) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (outputs,) = session.run(None, {"images": images.numpy()})
    return outputs


def test_exported_unet_in_onnxruntime_equals_pytorch(tmp_path):
    model, _ = saved_run(tmp_path, "segment", 3, 64, decoder_width=32)
    result = export_run(tmp_path, format="onnx")
    assert result.path == tmp_path / "model.onnx"
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-4
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = model(images).numpy()
    produced = run_onnx(result.path, images)
    assert produced.shape == (1, 3, 64, 64)
    assert np.abs(produced - expected).max() <= 1e-4

    description = json.loads((tmp_path / "model.json").read_text())
    assert description["classes"] == ["class0", "class1", "class2"]
    assert description["size"] == [64, 64] and description["input_range"] == [0.0, 1.0]
    assert description["task"] == "segment" and description["activation"] == "softmax"
    assert description["stats"][0] == pytest.approx(list(model.body.stats[0]))
    assert description["max_abs_diff"] == result.max_abs_diff


def test_exported_classifier_with_dynamic_batch_and_size_equals_pytorch(tmp_path):
    model, config = saved_run(tmp_path, "classify", 4, 32)
    out = tmp_path / "exports" / "pets.onnx"
    result = export_model(model, config, out, dynamic=True)
    assert result.checked_shapes == [(1, 3, 32, 32), (2, 3, 32, 32), (1, 3, 64, 64)]
    assert result.max_abs_diff <= 1e-4
    assert (tmp_path / "exports" / "pets.json").exists()
    images = torch.rand(3, 3, 48, 40, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(images).numpy()
    produced = run_onnx(out, images)
    assert produced.shape == (3, 4)
    assert np.abs(produced - expected).max() <= 1e-4


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_export_loads_without_torso_and_equals_pytorch(tmp_path):
    model, config = saved_run(tmp_path, "classify", 2, 32)
    result = export_run(tmp_path, format="torchscript")
    assert result.path == tmp_path / "model.torchscript.pt"
    assert result.max_abs_diff <= 1e-4
    loaded = torch.jit.load(str(result.path))
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(images), model(images), atol=1e-4)
    assert json.loads((tmp_path / "model.torchscript.json").read_text())["format"] == "torchscript"


def test_a_failed_trace_is_a_clear_message_and_writes_nothing(tmp_path):
    class Branchy(torch.nn.Module):
        def forward(self, images):
            return {"scores": images.mean()}  # tracing refuses dict outputs of this kind

    config = RunConfig("classify", "test_resnet", 2, 8)
    with pytest.raises(TorsoError, match="TorchScript tracing .* failed.*--format onnx"):
        export_model(Branchy(), config, tmp_path / "m.pt", format="torchscript")
    assert not (tmp_path / "m.pt").exists()


def test_cli_export_prints_the_difference_and_names_bad_input(tmp_path, capsys):
    saved_run(tmp_path, "classify", 3, 32)
    out = tmp_path / "m.onnx"
    assert main(["export", str(tmp_path), "--out", str(out), "--size", "32", "48"]) == 0
    printed = capsys.readouterr().out
    assert "max abs difference from PyTorch" in printed and "1x3x32x48" in printed
    assert json.loads((tmp_path / "m.json").read_text())["input_shape"] == [1, 3, 32, 48]

    assert main(["export", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "x.json")]) == 2
    assert ".json" in capsys.readouterr().err


@pytest.mark.parametrize("format", ["onnx", "torchscript"])
def test_export_lets_memory_errors_and_bugs_through(tmp_path, monkeypatch, format):
    """Only the exporters' own errors mean "cannot export"; running out of memory or a bug in
    torso is not turned into that message."""
    model, config = saved_run(tmp_path, "classify", 2, 32)

    def out_of_memory(*args, **kwargs):
        raise MemoryError

    def bug(*args, **kwargs):
        raise NameError("name 'undefined' is not defined")

    target = "export" if format == "onnx" else "trace"
    module = torch.onnx if format == "onnx" else torch.jit
    for failure, kind in ((out_of_memory, MemoryError), (bug, NameError)):
        monkeypatch.setattr(module, target, failure)
        with pytest.raises(kind):
            export_model(model, config, tmp_path / "m.out", format=format)
    monkeypatch.setattr(module, target, lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no")))
    with pytest.raises(TorsoError, match="failed for this model: no"):
        export_model(model, config, tmp_path / "m.out", format=format)


def test_export_checks_on_a_real_image_prepared_as_validation_does(tmp_path):
    from PIL import Image

    saved_run(tmp_path, "classify", 2, 32)
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), np.uint8)).save(photo)
    result = export_run(tmp_path, format="torchscript", check_image=photo)
    assert result.max_abs_diff < 1e-4 and result.checked_shapes == [(1, 3, 32, 32)]
    with pytest.raises(TorsoError, match="trained size 32x32"):
        export_run(tmp_path, format="torchscript", size=48, check_image=photo)
