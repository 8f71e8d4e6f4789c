"""Every ```python example in README.md runs as written (in a folder with a small `photos/`),
and what it shows is true: each example has a check below of the values its comments state.

Examples that need what a test cannot give (several processes, downloaded weights) are fenced as
```py instead, and are checked by the tests of their feature.

Every ```bash example that calls `curl` runs too, as written, against a real `torso serve`
server on a free port of 127.0.0.1 (the example's `127.0.0.1:8000` is replaced by that
address), in a folder laid out as `torso demo` leaves it: `runs/demo-classify/` (a small model
with random weights and the demo's classes and input size) and the demo's image files.
"""

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
CURL_BLOCKS = [
    block
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.DOTALL)
    if "curl " in block
]


@pytest.fixture
def photos_folder(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    for name, channel in (("red", 0), ("green", 1)):
        folder = tmp_path / "photos" / name
        folder.mkdir(parents=True)
        for index in range(40):
            pixels = rng.integers(0, 100, (40, 48, 3), dtype=np.uint8)
            pixels[..., channel] += 150
            Image.fromarray(pixels).save(folder / f"{index}.jpg")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 4


def count(module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def check_bodies(ns):
    body = ns["body"]
    assert body.channels == [64, 64, 128, 256, 512]
    assert body.reductions == [2, 4, 8, 16, 32]
    assert body.stats == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert len(ns["maps"]) == 5 and ns["maps"][-1].shape == (2, 512, 4, 4)


def check_models(ns):
    model = ns["model"].eval()
    assert model.body.channels[-1] == 512 and model(torch.rand(2, 3, 64, 64)).shape == (2, 37)
    assert count(ns["head"]) == 532_480  # fastai's create_head(512, 10)


def check_learner(ns):
    row = ns["learner"].history[-1]
    assert {"train_loss", "valid_loss", "accuracy"} <= set(row) and row["epoch"] == 1
    assert Path("runs/photos/model.safetensors").is_file()
    assert Path("runs/photos/torso.json").is_file()
    config = ns["predictor"].config
    assert config.classes == ("green", "red") and config.backbone == "test_resnet"
    assert config.size == (32, 32)
    [record] = ns["predictor"].predict(["photos/red/0.jpg"])
    assert record["prediction"] in {"red", "green"}


def check_segmentation(ns):
    assert count(ns["unet"]) == 41_221_268
    assert ns["masks"].shape == (1, 3, 200, 300)
    assert count(ns["paper"]) == 31_030_658
    assert ns["small"](torch.rand(1, 3, 64, 64)).shape == (1, 4, 64, 64)


def check_data(ns):
    assert ns["images"].dtype == torch.float32 and ns["images"].shape[1:] == (3, 224, 224)
    assert 0 <= float(ns["images"].min()) and float(ns["images"].max()) <= 1
    assert ns["targets"].dtype == torch.int64 and len(ns["targets"]) == len(ns["images"])
    assert ns["dls"].classes == ["green", "red"] and ns["dls"].num_outputs == 2
    assert len(ns["dls"].train_items) + len(ns["dls"].valid_items) == 80
    assert Path("batch.png").stat().st_size > 1000


def check_siamese(ns):
    assert count(ns["model"]) == 22_339_392  # as the book's
    assert ns["scores"].shape == (4, 2)


def check_detection(ns):
    detector = ns["detector"]
    assert detector.head.anchor_generator.sizes == ((8,), (16,), (32,), (64,), (128,))
    assert detector.head.backbone.levels == 5
    found = ns["found"]
    assert set(found) == {"boxes", "scores", "labels"} and found["boxes"].shape[1] == 4
    assert found["labels"].lt(2).all()


def check_interpretation(ns):
    maps = ns["maps"]
    assert maps.shape == (2, 32, 32) and maps.dtype == torch.float32
    assert set(maps.amax(dim=(1, 2)).tolist()) <= {0.0, 1.0} and maps.min() >= 0
    assert ns["reds"].shape == (1, 32, 32)
    card = Path("runs/photos/card.md").read_text()
    assert "classifies 32x32 images into one of 2 classes: green, red" in card
    assert 'torso.load("runs/photos")' in card and "### Per class" in card
    assert "<h2>Per class</h2>" in Path("runs/photos/report.html").read_text()
    assert Path("cams/0_cam.png").stat().st_size > 100
    assert '"overlay": "0_cam.png"' in Path("cams/interpret.json").read_text()


# The first line of code an example starts with (after its imports) -> its check.
CHECKS = {
    'body = torso.create_body("resnet34")': check_bodies,
    'model = torso.create_model("resnet34", num_outputs=37)': check_models,
    "images = torch.rand(64, 3, 32, 32)": check_learner,
    'unet = DynamicUnet(torso.create_body("tv:resnet34"), num_classes=3)': check_segmentation,
    'dls = load_data("photos/", task="classify", size=224, batch_size=64)': check_data,
    'model = create_siamese_model("resnet34", num_outputs=2)': check_siamese,
    'detector = create_detection_model("resnet18", num_classes=2)': check_detection,
    "maps = predictor.explain(": check_interpretation,
}


def check_of(block: str):
    found = [check for start, check in CHECKS.items() if start in block]
    assert len(found) == 1, f"README example without exactly one check:\n{block}"
    return found[0]


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_example_runs_and_shows_what_is_true(index, photos_folder):
    check = check_of(BLOCKS[index])
    namespace: dict = {}
    exec(compile(BLOCKS[index], f"README.md python example {index + 1}", "exec"), namespace)
    with torch.no_grad():
        check(namespace)


# -- curl examples against `torso serve` ---------------------------------------------------------
DEMO_IMAGE = "runs/demo-data/fashion-mnist/valid/ankle-boot/valid-00000.png"


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    from serve_helpers import fashion_image, running_server, saved_run

    import torso
    from torso.data.demo import FASHION_CLASSES
    from torso.tools.serve import ServedModel, create_app

    folder = tmp_path_factory.mktemp("readme-serve")
    run = saved_run(folder / "runs" / "demo-classify", "classify", FASHION_CLASSES, 48)
    image = folder / DEMO_IMAGE
    image.parent.mkdir(parents=True)
    _, label = fashion_image(image, 0)
    assert label == "ankle-boot"  # where `torso demo` writes it
    with running_server(create_app(ServedModel(run))) as url:
        yield folder, url, torso.load(run).predict([image])[0]


def test_readme_has_curl_examples():
    assert len(CURL_BLOCKS) >= 2 and all(DEMO_IMAGE in block for block in CURL_BLOCKS)


@pytest.mark.parametrize("index", range(len(CURL_BLOCKS)))
def test_readme_curl_example_gets_the_predictors_answer(index, demo_server):
    assert shutil.which("curl"), "the README's curl examples need curl: apt-get install curl"
    folder, url, expected = demo_server
    block = CURL_BLOCKS[index]
    assert "http://127.0.0.1:8000/" in block
    script = "set -euo pipefail\n" + block.replace("http://127.0.0.1:8000", url)
    result = subprocess.run(
        ["bash", "-c", script], cwd=folder, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    [record] = json.loads(result.stdout)["predictions"]
    assert record["prediction"] == expected["prediction"]
    assert abs(record["probability"] - expected["probability"]) < 1e-5
    assert {key for key in record if key.startswith("p_")} == {
        key for key in expected if key.startswith("p_")
    }
    if "explain=1" in block:
        assert record["heatmap"]["encoding"] == "png" and record["heatmap"]["width"] == 48
