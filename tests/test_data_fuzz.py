"""Fuzzing the check: damaged PNG, JPEG, GIF and WebP files, made from a fixed seed.

Whatever the check lets through must decode in training exactly as everywhere else, and a
training epoch over the data with `skip_bad=True` must complete.
"""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest
import torch
from data_builders import noise_image
from PIL import Image

from torso.cli import main
from torso.data import check_data, load_data, load_images

FORMATS = {  # extension: PIL save options
    ".png": {"format": "PNG"},
    ".jpg": {"format": "JPEG", "quality": 90},
    ".gif": {"format": "GIF"},
    ".webp": {"format": "WEBP", "quality": 80},
}
MUTATIONS_PER_FORMAT = 9


def _encoded(extension: str, seed: int) -> bytes:
    # Smooth pictures with noise; JPEGs larger than 128 px so that the check's reduced-scale
    # decoding differs from the full decoding of validation.
    width, height = (160, 136) if extension == ".jpg" else (40, 36)
    gradient = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    pixels = np.asarray(noise_image(seed, width, height), np.float32) * 0.3 + gradient * 0.7
    image = Image.fromarray(pixels.astype(np.uint8))
    if extension == ".gif":
        image = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    buffer = io.BytesIO()
    image.save(buffer, **FORMATS[extension])
    return buffer.getvalue()


def _mutate(data: bytes, kind: str, generator: np.random.Generator) -> bytes:
    """`data` damaged one way: cut short, bytes flipped in the middle, a run of zeros, or a
    header byte flipped."""
    damaged = bytearray(data)
    length = len(data)
    if kind == "truncate":
        return bytes(damaged[: int(generator.integers(length // 8, length - 1))])
    if kind == "flip":
        start = int(generator.integers(length // 4, 3 * length // 4))
        for i in range(start, min(length, start + int(generator.integers(1, 12)))):
            damaged[i] ^= int(generator.integers(1, 256))
    elif kind == "zeros":
        start = int(generator.integers(length // 8, length - 64))
        run = int(generator.integers(8, 64))
        damaged[start : start + run] = bytes(run)
    else:  # header
        position = int(generator.integers(0, min(24, length)))
        damaged[position] ^= 1 << int(generator.integers(0, 8))
    return bytes(damaged)


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    """Two class folders of good images and a few dozen damaged files of each format."""
    root = tmp_path_factory.mktemp("fuzz")
    generator = np.random.default_rng(20240611)
    kinds = ["truncate", "flip", "zeros", "header"]
    seen: set[bytes] = set()
    seed = 0
    for name in ["a", "b"]:
        folder = root / name
        folder.mkdir()
        for extension in FORMATS:
            for copy in range(2):
                data = _encoded(extension, seed)
                seed += 1
                seen.add(hashlib.sha1(data).digest())
                (folder / f"good{copy}{extension}").write_bytes(data)
    for extension in FORMATS:
        for i in range(MUTATIONS_PER_FORMAT):
            data = _mutate(_encoded(extension, seed), kinds[i % len(kinds)], generator)
            seed += 1
            digest = hashlib.sha1(data).digest()
            if digest in seen:
                continue
            seen.add(digest)
            folder = root / ["a", "b"][i % 2]
            (folder / f"{kinds[i % len(kinds)]}{i}{extension}").write_bytes(data)
    return root


def test_what_the_check_passes_decodes_in_training_as_in_prediction(fuzzed, capsys):
    report = check_data(fuzzed, valid_pct=0.5, num_workers=2)
    files = {path for path in fuzzed.rglob("*") if path.is_file()}
    bad = report.bad_files
    passed = files - bad
    assert len(files) >= 40 and len(bad) >= 12 and len(passed) >= 20  # the fuzzing bites
    assert sum(1 for path in passed if path.name.startswith("good")) == 16
    assert main(["check", str(fuzzed), "--valid-pct", "0.5", "--json"]) == 1
    listed = {problem["file"] for problem in json.loads(capsys.readouterr().out)["problems"]}
    assert listed == {str(path) for path in bad}

    dls = load_data(
        fuzzed, size=24, valid_pct=0.5, cache=False, skip_bad=True, num_workers=0, batch_size=4
    )
    assert set(dls.train_items) | set(dls.valid_items) == passed
    # Every passed file, through the datasets that training and validation use: the
    # augmented training path (reduced-scale JPEG decoding, presize) and the validation path,
    # whose pixels must equal prediction's.
    for dataset in (dls.train.dataset, dls.valid.dataset):
        for index in range(len(dataset)):
            image, target = dataset[index]
            assert image.shape == (3, 24, 24) and image.dtype == torch.uint8
    expected = load_images(dls.valid_items, 24)
    got = torch.cat([images for images, _ in dls.valid])
    assert torch.equal(got, expected)


def test_an_epoch_with_skip_bad_completes_over_fuzzed_files(fuzzed):
    dls = load_data(fuzzed, size=24, valid_pct=0.25, skip_bad=True, num_workers=0, batch_size=3)
    assert dls.skipped
    seen = 0
    for images, targets in dls.train:
        assert images.shape[1:] == (3, 24, 24) and torch.isfinite(images).all()
        seen += len(targets)
    assert seen == len(dls.train_items) - len(dls.train_items) % 3
    assert sum(len(targets) for _, targets in dls.valid) == len(dls.valid_items)
