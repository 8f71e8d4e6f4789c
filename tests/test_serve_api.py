"""`torso serve`'s JSON API through Starlette's TestClient: `/predict` answers what
`Predictor.predict` answers (multipart batches and raw bodies, every task), heatmaps are
`Predictor.explain`'s, `/metadata` shows the run and its validation metrics, and every bad
request is a 4xx with a one-line JSON error."""

from __future__ import annotations

import base64
import io
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from serve_helpers import CLASSES, decoded, image_bytes, saved_run
from starlette.testclient import TestClient

import torso
from torso.data.transforms import input_region
from torso.errors import TorsoError
from torso.tasks.detect import to_original
from torso.tools.serve import ServedModel, create_app


@pytest.fixture(scope="module")
def classify_run(tmp_path_factory):
    return saved_run(tmp_path_factory.mktemp("serve") / "shapes", size=64)


@pytest.fixture(scope="module")
def client(classify_run):
    app = create_app(ServedModel(classify_run), max_upload_mb=0.05, max_images=4)
    with TestClient(app) as client:
        yield client


def png_values(encoded: dict) -> np.ndarray:
    assert encoded["encoding"] == "png"
    image = Image.open(io.BytesIO(base64.b64decode(encoded["data"])))
    assert image.mode == "L" and image.size == (encoded["width"], encoded["height"])
    return np.asarray(image)


def test_health_metadata_and_page(client, classify_run):
    assert client.get("/health").json() == {"status": "ok", "backend": "pytorch", "waiting": 0}
    meta = client.get("/metadata").json()
    assert meta["name"] == "shapes" and meta["task"] == "classify"
    assert meta["backbone"] == "test_resnet" and meta["classes"] == CLASSES
    assert meta["view"] == "classes" and meta["images_per_sample"] == 1
    assert meta["heatmaps"] is True and meta["metrics"] is None
    assert meta["config"]["num_outputs"] == 3 and meta["config"]["size"] == [64, 64]
    assert meta["limits"] == {"max_upload_mb": 0.05, "max_images": 4}
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="file"' in page.text


def test_the_page_fetches_nothing_from_elsewhere():
    from torso.tools.serve.app import page_html

    html = page_html()
    assert "http://" not in html and "https://" not in html
    assert "@import" not in html and "url(" not in html and "<script src" not in html
    # Every address in an attribute is inline data (the empty icon).
    addresses = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", html)
    assert addresses == ["data:,"]


def test_metadata_shows_the_validation_metrics_of_the_served_epoch(tmp_path):
    run = saved_run(tmp_path / "pets")
    rows = "epoch,train_loss,valid_loss,accuracy,error_rate,lr,time\n"
    rows += "1,0.9,0.8,0.5,0.5,0.001,3.0\n2,0.7,0.6,0.75,0.25,0.001,3.1\n"
    rows += "3,0.5,0.9,0.6,0.4,0.0,3.0\n"
    (run / "metrics.csv").write_text(rows)
    shutil.copytree(run, run / "best", ignore=shutil.ignore_patterns("metrics.csv", "best"))
    last = ServedModel(run).metadata()
    assert last["metrics"] == {"epoch": 3, "valid_loss": 0.9, "accuracy": 0.6, "error_rate": 0.4}
    best = ServedModel(run / "best").metadata()
    assert best["name"] == "pets/best"
    assert best["metrics"] == {"epoch": 2, "valid_loss": 0.6, "accuracy": 0.75, "error_rate": 0.25}


def test_a_batch_of_files_and_a_raw_body_get_the_predictors_records(client, classify_run):
    predictor = torso.load(classify_run)
    data = [image_bytes(seed) for seed in range(3)]
    files = [("image", (f"{i}.png", item, "image/png")) for i, item in enumerate(data)]
    answer = client.post("/predict", files=files)
    assert answer.status_code == 200
    expected = predictor.predict([decoded(item) for item in data])
    assert answer.json() == {"predictions": expected}
    raw = client.post("/predict", content=data[1], headers={"content-type": "image/png"})
    assert raw.json() == {"predictions": expected[1:2]}
    jpeg = client.post("/predict", content=image_bytes(7, format="JPEG"))
    assert jpeg.status_code == 200 and jpeg.json()["predictions"][0]["prediction"] in CLASSES


def test_explain_adds_the_predictors_grad_cam_as_a_png(client, classify_run):
    predictor = torso.load(classify_run)
    data = image_bytes(3, width=90, height=50)
    [record] = client.post("/predict?explain=1", content=data).json()["predictions"]
    expected = predictor.explain(decoded(data))[0]
    values = png_values(record["heatmap"])
    assert values.shape == (64, 64)
    assert np.abs(values.astype(int) - (expected * 255).round().numpy()).max() <= 1
    assert record["heatmap"]["region"] == [0.0, 0.0, 90.0, 50.0]  # squish: the whole image
    assert "heatmap" not in client.post("/predict", content=data).json()["predictions"][0]


def test_heatmap_regions_follow_the_resize():
    # A 100x50 image prepared at 32: crop keeps its centre 50x50, pad puts it in a 100x100
    # square whose top and bottom 25 rows lie outside it.
    assert input_region(50, 100, 32, "squish") == (0.0, 0.0, 100.0, 50.0)
    assert input_region(50, 100, 32, "crop") == (25.0, 0.0, 75.0, 50.0)
    assert input_region(50, 100, 32, "pad") == (0.0, -25.0, 100.0, 75.0)


@pytest.mark.parametrize(
    ("task_name", "options", "view"),
    [
        ("multilabel", {}, "labels"),
        ("regress", {}, "values"),
        ("segment", {"decoder_width": 16}, "mask"),
        ("detect", {"pyramid_channels": 64, "score_threshold": 0.0}, "boxes"),
    ],
)
def test_every_task_answers_what_its_predictor_answers(tmp_path, task_name, options, view):
    run = saved_run(tmp_path / task_name, task_name, ["a", "b"], 64, **options)
    predictor = torso.load(run)
    data = [image_bytes(seed, width=80, height=48) for seed in (1, 2)]
    images = [decoded(item) for item in data]
    with TestClient(create_app(ServedModel(run))) as client:
        meta = client.get("/metadata").json()
        assert meta["view"] == view and meta["heatmaps"] == (view == "labels")
        files = [("image", (f"{i}.png", item, "image/png")) for i, item in enumerate(data)]
        answer = client.post("/predict?explain=1", files=files)
    assert answer.status_code == 200
    records = answer.json()["predictions"]
    expected = predictor.predict(images)
    assert len(records) == 2
    for record, truth in zip(records, expected, strict=True):
        if view == "labels":
            assert "heatmap" in record  # Grad-CAM of the most probable label
            record.pop("heatmap")
        else:
            assert "no class activation map" in record.pop("heatmap_error")
        if task_name == "segment":
            mask = png_values(record.pop("mask"))
            assert mask.shape == (48, 80) and np.array_equal(mask, truth.pop("mask"))
        if task_name == "detect":
            # Boxes in the uploaded image's pixels: the prepared image's, mapped back.
            prepared = torch.tensor(truth.pop("boxes")).reshape(-1, 4)
            back = to_original(prepared, 48, 80, 64, "squish")
            assert torch.allclose(torch.tensor(record.pop("boxes")).reshape(-1, 4), back, atol=0.02)
        assert record == truth


def test_a_pair_model_takes_images_two_at_a_time(tmp_path):
    run = saved_run(tmp_path / "pairs", "siamese", ["different", "same"])
    predictor = torso.load(run)
    a, b = image_bytes(1), image_bytes(2)
    with TestClient(create_app(ServedModel(run))) as client:
        assert client.get("/metadata").json()["view"] == "pair"
        pair = [("image", ("a.png", a, "image/png")), ("image", ("b.png", b, "image/png"))]
        answer = client.post("/predict", files=pair)
        one = client.post("/predict", files=pair[:1])
    assert answer.json() == {"predictions": predictor.predict([decoded(a), decoded(b)])}
    assert one.status_code == 400
    assert one.json() == {
        "error": "a siamese model compares images 2 at a time: send 2 images (or a multiple), got 1"
    }


PNG = image_bytes(0)
TRUNCATED = PNG[: len(PNG) // 2]


def chunks(data: bytes):
    """A body sent in pieces without a Content-Length (chunked)."""
    for start in range(0, len(data), 8192):
        yield data[start : start + 8192]


@pytest.mark.parametrize(
    ("request_arguments", "status", "message"),
    [
        ({"content": b""}, 400, "empty request"),
        ({"content": b"hello, I am not an image"}, 400, "'the request body': not a readable"),
        ({"content": TRUNCATED}, 400, "'the request body': truncated image"),
        (
            {"files": [("image", ("cut.png", TRUNCATED, "image/png"))]},
            400,
            "'cut.png': truncated image",
        ),
        ({"files": [("image", ("empty.png", b"", "image/png"))]}, 400, "'empty.png': empty file"),
        ({"content": b"x" * 60_000}, 413, "larger than the server's limit of 0.05 MB"),
        ({"content": chunks(b"x" * 60_000)}, 413, "larger than the server's limit of 0.05 MB"),
        (
            {"files": [("image", (f"{i}.png", PNG, "image/png")) for i in range(5)]},
            400,
            "Too many files",
        ),
        (
            {"data": {"note": "hi"}, "files": [], "headers": {}},
            400,
            "not a readable image",
        ),
        (
            {"content": b"--x\r\n", "headers": {"content-type": "multipart/form-data"}},
            400,
            "boundary",
        ),
        ({"content": PNG, "params": {"explain": "maybe"}}, 400, "?explain= takes 1 or 0"),
    ],
)
def test_bad_requests_get_a_one_line_json_error(client, request_arguments, status, message):
    answer = client.post("/predict", **request_arguments)
    assert answer.status_code == status
    error = answer.json()["error"]
    assert message in error and "\n" not in error
    assert client.get("/health").json()["status"] == "ok"


def test_a_multipart_request_without_a_file_part_says_how_to_send_one(client):
    body = b'--b\r\nContent-Disposition: form-data; name="image"\r\n\r\nnot a file\r\n--b--\r\n'
    answer = client.post(
        "/predict", content=body, headers={"content-type": "multipart/form-data; boundary=b"}
    )
    assert answer.status_code == 400
    assert "no file part" in answer.json()["error"] and "-F image=@" in answer.json()["error"]


def test_unknown_routes_and_methods_are_json_errors(client):
    assert client.get("/nowhere").status_code == 404
    assert client.get("/nowhere").json() == {"error": "Not Found"}
    assert client.get("/predict").status_code == 405
    assert client.get("/predict").json() == {"error": "Method Not Allowed"}


@pytest.mark.parametrize("dynamic", [False, True])
def test_the_onnx_backend_answers_as_pytorch_does(tmp_path, classify_run, dynamic):
    from torso.tools.export import export_run

    onnx = export_run(classify_run, out=tmp_path / "model.onnx", dynamic=dynamic).path
    data = [image_bytes(seed, width=70, height=45) for seed in range(3)]
    files = [("image", (f"{i}.png", item, "image/png")) for i, item in enumerate(data)]
    with TestClient(create_app(ServedModel(classify_run))) as client:
        expected = client.post("/predict", files=files).json()["predictions"]
    with TestClient(create_app(ServedModel(classify_run, onnx=onnx))) as client:
        meta = client.get("/metadata").json()
        answer = client.post("/predict?explain=1", files=files).json()["predictions"]
    assert meta["backend"] == "onnxruntime" and meta["heatmaps"] is False
    assert "ONNX" in meta["heatmap_error"]
    for record, truth in zip(answer, expected, strict=True):
        assert "heatmaps need the PyTorch model" in record.pop("heatmap_error")
        assert record["prediction"] == truth["prediction"]
        assert record.keys() == truth.keys()
        for name in CLASSES:  # the stated tolerance: 1e-4 on every probability
            assert abs(record[f"p_{name}"] - truth[f"p_{name}"]) <= 1e-4


def test_an_onnx_file_that_does_not_fit_is_refused_by_name(tmp_path, classify_run):
    from torso.tools.export import export_run

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(TorsoError, match="bad.onnx'.*onnxruntime cannot load it"):
        ServedModel(classify_run, onnx=bad)
    with pytest.raises(TorsoError, match="no such file"):
        ServedModel(classify_run, onnx=tmp_path / "missing.onnx")
    other = export_run(classify_run, out=tmp_path / "small.onnx", size=32).path
    with pytest.raises(TorsoError, match="takes 32x32 images; the run was trained at 64x64"):
        ServedModel(classify_run, onnx=other)


def test_a_bug_in_the_model_call_is_a_500_and_the_server_carries_on(classify_run, monkeypatch):
    model = ServedModel(classify_run)
    calls = []

    def broken(images, explain=False):
        calls.append(len(images))
        if len(calls) == 1:
            raise RuntimeError("a bug, not the user's fault")
        return ServedModel.answer(model, images, explain)

    monkeypatch.setattr(model, "answer", broken)
    with TestClient(create_app(model), raise_server_exceptions=False) as client:
        failed = client.post("/predict", content=image_bytes(0))
        assert failed.status_code == 500
        assert failed.json() == {"error": "internal error (RuntimeError); see the log"}
        assert client.post("/predict", content=image_bytes(0)).status_code == 200
