"""Embeddings: pooled body features written to .npy + .json (or .parquet), cosine search, the
model's identity, bad files, and the `torso embed` / `torso similar` commands."""

from __future__ import annotations

import importlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from torso.cli import main
from torso.errors import TorsoError
from torso.tools import embed
from torso.tools.embed import (
    Embedder,
    check_same_model,
    embed_files,
    list_images,
    load_embedder,
    read_index,
    search,
)

SIZE = 32


@pytest.fixture
def images(tmp_path) -> Path:
    """Seven random images (one in a subfolder, one JPEG) and `copy.png`, a copy of `0.png`."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    for index in range(6):
        pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{index}.png")
    Image.fromarray(rng.integers(0, 256, (36, 36, 3), dtype=np.uint8)).save(folder / "sub/a.jpg")
    shutil.copy(folder / "0.png", folder / "copy.png")
    return folder


def embed_cli(*arguments: str) -> int:
    return main(["embed", *arguments, "--size", str(SIZE), "--quiet", "--workers", "0"])


def similar_json(capsys, *arguments: str) -> list[dict]:
    capsys.readouterr()
    assert main(["similar", *arguments, "--json"]) == 0
    return json.loads(capsys.readouterr().out)["neighbours"]


def test_same_image_twice_has_cosine_one_and_embedding_is_deterministic(images, tmp_path):
    files, root = list_images(images)
    assert [f.relative_to(images).as_posix() for f in files] == [
        "0.png", "1.png", "2.png", "3.png", "4.png", "5.png", "copy.png", "sub/a.jpg",
    ]  # fmt: skip
    embedder, identity = load_embedder("test_resnet", size=SIZE)
    first = embed_files(embedder, identity, files, tmp_path / "a.npy", root=root, batch_size=3)
    again, identity_again = load_embedder("test_resnet", size=SIZE)
    embed_files(again, identity_again, files, tmp_path / "b.npy", root=root, batch_size=5)
    a, b = np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy")
    assert a.dtype == np.float32 and a.shape == (8, first.dim) == (8, 96)
    assert identity_again == identity  # random weights drawn from the seed: the same model
    np.testing.assert_array_equal(a, b)  # deterministic, whatever the batch size

    index = read_index(tmp_path / "a.npy")
    assert index.files[0] == "0.png" and index.files[6] == "copy.png"
    rows, scores = search(index.vectors, a[0], k=2)
    assert sorted(rows.tolist()) == [0, 6]
    np.testing.assert_allclose(scores, [1.0, 1.0], atol=1e-6)


def test_pooling_and_normalisation(images):
    files = list_images(images)[0][:3]
    embedder, identity = load_embedder("test_convnext", size=2 * SIZE, pooling="concat")
    batch = torch.stack([embed.read_for_embedding(f, identity) for f in files]).float() / 255
    with torch.no_grad():
        maps = embedder.body(batch)
        concat = embedder(batch)
        average = Embedder(embedder.body, "avg")(batch)
        unit = Embedder(embedder.body, "avg", normalize=True)(batch)
    channels = embedder.body.num_features
    assert maps.shape[-1] > 1  # a map bigger than 1x1, so max and average differ
    assert concat.shape == (3, 2 * channels) and average.shape == (3, channels)
    torch.testing.assert_close(concat[:, :channels], maps.amax(dim=(2, 3)))
    torch.testing.assert_close(concat[:, channels:], average)
    torch.testing.assert_close(unit.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(unit, average / average.norm(dim=1, keepdim=True))
    with pytest.raises(TorsoError, match="pool"):
        load_embedder("test_convnext", pooling="gem")


def test_embedder_equals_timm_forward_features_with_average_pooling():
    embedder, _ = load_embedder("test_efficientnet", size=SIZE)
    model = embedder.body.model  # the timm model inside the body
    mean, std = embedder.body.stats
    images = torch.rand(4, 3, SIZE, SIZE)
    normalised = (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model.forward_features(normalised).mean(dim=(2, 3))
        torch.testing.assert_close(embedder(images), expected)
    assert isinstance(model, timm.models.EfficientNet)


def test_model_mismatch_is_detected(images, tmp_path):
    _, made = load_embedder("test_resnet", size=SIZE)
    for other in (
        load_embedder("test_convnext", size=SIZE)[1],
        load_embedder("test_resnet", size=SIZE, seed=1)[1],  # other weights
        load_embedder("test_resnet", size=SIZE + 16)[1],
        load_embedder("test_resnet", size=SIZE, normalize=True)[1],
    ):
        with pytest.raises(TorsoError, match="another model"):
            check_same_model(made, other, "index.npy")
    check_same_model(made, load_embedder("test_resnet", size=SIZE)[1], "index.npy")


def test_embed_and_similar_commands(images, tmp_path, capsys):
    out = tmp_path / "index" / "photos.npy"
    assert embed_cli("test_resnet", str(images), "--out", str(out), "--normalize") == 0
    printed = capsys.readouterr().out
    assert "wrote 8 embeddings of 96 numbers" in printed
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["model"]["backbone"] == "test_resnet" and sidecar["model"]["normalize"]
    assert sidecar["count"] == 8 and len(sidecar["files"]) == 8
    assert np.linalg.norm(np.load(out), axis=1) == pytest.approx(np.ones(8), abs=1e-5)

    neighbours = similar_json(capsys, str(out), str(images / "copy.png"), "-k", "3")
    assert {n["file"] for n in neighbours[:2]} == {"0.png", "copy.png"}
    assert neighbours[0]["similarity"] == pytest.approx(1.0, abs=1e-5)
    assert len(neighbours) == 3

    # The same model named explicitly is accepted; another backbone or other weights are not.
    explicit = ["--backbone", "test_resnet"]
    assert similar_json(capsys, str(out), str(images / "1.png"), *explicit)[0]["file"] == "1.png"
    for other in (["--backbone", "test_convnext"], ["--backbone", "test_resnet", "--seed", "3"]):
        assert main(["similar", str(out), str(images / "1.png"), *other]) == 2
        error = capsys.readouterr().err
        assert "made by another model" in error and "test_resnet" in error

    # The table names the files.
    assert main(["similar", str(out), str(images / "1.png"), "-k", "2"]) == 0
    assert "1.png" in capsys.readouterr().out


def test_bad_file_is_named_or_skipped_and_counted(images, tmp_path, capsys):
    (images / "broken.png").write_bytes(b"not an image at all")
    out = tmp_path / "bad.npy"
    assert embed_cli("test_resnet", str(images), "--out", str(out)) == 1
    assert "broken.png" in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.glob(".bad*")) == []  # nothing half-written

    assert embed_cli("test_resnet", str(images), "--out", str(out), "--skip-bad") == 0
    printed = capsys.readouterr().out
    assert "skipped 1 unreadable file(s)" in printed and "broken.png" in printed
    index = read_index(out)
    assert index.vectors.shape == (8, 96) and "broken.png" not in index.files
    assert json.loads(out.with_suffix(".json").read_text())["skipped"][0]["file"] == "broken.png"


def test_index_from_a_trained_run_uses_its_size_and_rebuilds_its_model(images, tmp_path, capsys):
    from torso.checkpoint import save_model
    from torso.config import RunConfig
    from torso.tasks import get_task

    task = get_task("classify")
    config = RunConfig("classify", "test_resnet", 3, 48, classes=["a", "b", "c"])
    run = save_model(task.build_model(config), config, tmp_path / "run")
    out = tmp_path / "run.npy"
    assert main(["embed", str(run), str(images), "--out", str(out), "--quiet"]) == 0
    index = read_index(out)
    assert index.identity.source == "run" and index.identity.size == 48
    assert index.identity.location == str(run.resolve())
    # No --model: the query is embedded by the run the index names.
    neighbours = similar_json(capsys, str(out), str(images / "3.png"), "-k", "1")
    assert neighbours[0]["file"] == "3.png"
    # A backbone with the same name but other weights is refused.
    assert main(["similar", str(out), str(images / "3.png"), "--model", "test_resnet"]) == 2
    assert "weights" in capsys.readouterr().err


def test_search_in_chunks_matches_brute_force(monkeypatch):
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(1000, 16)).astype(np.float32)
    queries = rng.normal(size=(3, 16)).astype(np.float32)
    # the module, not the function `embed.search` of the same name
    monkeypatch.setattr(
        importlib.import_module("torso.tools.embed.search"), "SEARCH_CHUNK_ROWS", 97
    )
    rows, scores = search(vectors, queries, k=7, backend="numpy")
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cosine = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ unit.T
    np.testing.assert_array_equal(rows, np.argsort(-cosine, axis=1)[:, :7])
    np.testing.assert_allclose(scores, np.sort(cosine, axis=1)[:, ::-1][:, :7], rtol=1e-5)
    assert search(vectors[:4], queries[0], k=10)[0].shape == (4,)  # k larger than the index
    with pytest.raises(TorsoError, match="16"):
        search(vectors, np.ones(8, dtype=np.float32))


def test_parquet_output_round_trips_or_names_pyarrow(images, tmp_path):
    out = tmp_path / "photos.parquet"
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        assert embed_cli("test_resnet", str(images), "--out", str(out)) == 2
        assert not out.exists()
        with pytest.raises(TorsoError, match="pyarrow"):
            read_index(out)
        return
    assert embed_cli("test_resnet", str(images), "--out", str(out)) == 0
    npy = tmp_path / "photos.npy"
    assert embed_cli("test_resnet", str(images), "--out", str(npy)) == 0
    from_parquet, from_npy = read_index(out), read_index(npy)
    assert from_parquet.files == from_npy.files
    assert from_parquet.identity == from_npy.identity
    np.testing.assert_array_equal(from_parquet.vectors, np.asarray(from_npy.vectors))


def test_bad_arguments_are_clear(images, tmp_path, capsys):
    assert embed_cli("test_resnet", str(images), "--out", str(tmp_path / "x.csv")) == 2
    assert ".npy or .parquet" in capsys.readouterr().err
    assert embed_cli("test_resnet", str(tmp_path / "nowhere"), "--out", "x.npy") == 2
    assert "nowhere' does not exist" in capsys.readouterr().err
    assert embed_cli("no_such_net", str(images), "--out", str(tmp_path / "x.npy")) == 2
    assert "unknown backbone" in capsys.readouterr().err
    index = tmp_path / "index.npy"
    assert embed_cli("test_resnet", str(images / "0.png"), "--out", str(index)) == 0
    assert main(["similar", str(index), str(images / "0.png"), "--pretrained"]) == 2
    assert "give --model" in capsys.readouterr().err
    lonely = tmp_path / "lonely.npy"
    np.save(lonely, np.zeros((2, 4), dtype=np.float32))
    assert main(["similar", str(lonely), str(images / "0.png")]) == 2
    assert "lonely.json" in capsys.readouterr().err


def test_embed_takes_images_before_and_after_its_options(images, tmp_path):
    out = tmp_path / "index.npy"
    a, b = str(images / "0.png"), str(images / "1.png")
    assert embed_cli("test_resnet", a, "--normalize", b, "--out", str(out)) == 0
    index = read_index(out)
    assert index.files == ["0.png", "1.png"] and index.identity.normalize


def one_line_error(capsys, *fragments: str) -> None:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("torso: error:"), err
    assert all(fragment in err for fragment in fragments), err


def test_an_unwritable_out_is_one_line_before_any_image_is_embedded(
    images, tmp_path, capsys, monkeypatch
):
    (tmp_path / "a_file").write_text("")
    # A folder where no file can be created: read-only for an ordinary user; root writes
    # through permissions, but not into /proc.
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    unwritable = Path("/proc") if os.geteuid() == 0 else locked
    cases = [
        (unwritable / "x.npy", f"cannot write in '{unwritable}'"),
        (tmp_path / "a_file" / "x.npy", "is a file, not a folder"),
        (tmp_path / "a_file" / "sub" / "x.npy", "cannot create the folder"),
    ]
    read = []
    monkeypatch.setattr(embed.index, "read_for_embedding", lambda *args: read.append(args))
    try:
        for out, message in cases:
            assert embed_cli("test_resnet", str(images / "0.png"), "--out", str(out)) == 2
            one_line_error(capsys, f"--out '{out}'", message)
    finally:
        locked.chmod(0o755)
    assert not read and not list(locked.iterdir())


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "is empty (0 bytes)"),
        (b"\x93NUMPY\x01\x00v\x00{'descr'", "is damaged or truncated"),
        (b"garbage " * 100, "not a NumPy .npy file"),
        ("int64", "2-d int64 array, not a matrix of float vectors"),
        ("vector", "1-d float32 array"),
        ("narrow", "holds vectors of 3 numbers but 'index.json' says"),
    ],
)
def test_a_damaged_npy_index_is_one_line(images, tmp_path, capsys, content, message):
    index = tmp_path / "index.npy"
    assert (
        embed_cli("test_resnet", str(images / "0.png"), str(images / "1.png"), "--out", str(index))
        == 0
    )
    if content == "int64":
        np.save(index, np.ones((2, 4), dtype=np.int64))
    elif content == "vector":
        np.save(index, np.ones(2, dtype=np.float32))
    elif content == "narrow":
        np.save(index, np.ones((2, 3), dtype=np.float32))
    else:
        index.write_bytes(content)
    capsys.readouterr()
    assert main(["similar", str(index), str(images / "0.png")]) == 2
    one_line_error(capsys, f"'{index}'", message)


def test_faiss_backend_matches_numpy_or_names_faiss():
    rng = np.random.default_rng(2)
    vectors = rng.normal(size=(500, 24)).astype(np.float32)
    queries = rng.normal(size=(4, 24)).astype(np.float32)
    try:
        import faiss  # noqa: F401
    except ImportError:
        with pytest.raises(TorsoError, match="faiss"):
            search(vectors, queries, k=5, backend="faiss")
        return
    rows, scores = search(vectors, queries, k=5, backend="faiss")
    expected_rows, expected_scores = search(vectors, queries, k=5, backend="numpy")
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)


def test_embedding_a_file_equals_embedding_its_prepared_tensor(tmp_path):
    """A large JPEG is decoded at full size (no draft-mode scaling): its embedding is the
    embedding of the validation pixels that `prepare_images` gives."""
    from torso.config import RunConfig
    from torso.data.prepare import prepare_images

    rng = np.random.default_rng(1)
    photo = tmp_path / "large.jpg"
    Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(photo, quality=90)
    embedder, identity = load_embedder("test_resnet", size=SIZE)
    from_file = embed.embed_query(embedder, identity, [photo])
    config = RunConfig("classify", "test_resnet", 1, identity.size, resize=identity.resize)
    with torch.no_grad():
        from_tensor = embedder(prepare_images(config, photo)).numpy()
    np.testing.assert_array_equal(from_file, from_tensor)
