"""Every benchmark script runs in its --quick mode and writes its table (torso and plain-loop
contenders only, so the optional peers fastai and smp are not needed; tiny sizes, nothing here
checks a speed)."""

from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


def run_script(name: str, out: Path, *options: str) -> str:
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    command = [sys.executable, str(BENCHMARKS / name), "--quick", "--out", str(out), *options]
    finished = subprocess.run(
        command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    return out.read_text()


def rows(table: str) -> list[str]:
    return [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")]


def test_train_speed(tmp_path):
    text = run_script("train_speed.py", tmp_path / "t.md", "--contenders", "torso", "plain")
    assert "(a) compute-bound" in text and "(b) input-bound" in text
    names = rows(text)
    assert names.count("torso") == 2 and names.count("plain loop, channels_last") == 2
    assert "fastai vision_learner" not in names
    assert "torso / contender, wall" in text and "- load average at end" in text


def test_unet(tmp_path):
    text = run_script("unet.py", tmp_path / "u.md", "--contenders", "torso", "plain")
    names = rows(text)
    assert "torso Learner, fastai widths" in names and "plain loop, fastai widths" in names
    assert any(name.startswith("torso Learner, fastai widths / plain loop") for name in names)
    assert "Inference" in text


def test_embed_speed(tmp_path):
    text = run_script("embed_speed.py", tmp_path / "e.md")
    names = rows(text)
    assert {
        "torso Embedder",
        "plain timm, channels_last",
        "torso embed_files",
        "plain loop",
    } <= set(names)
    assert "largest difference between the vectors 0.00e+00" in text


def test_presize_cache(tmp_path):
    text = run_script("presize_cache.py", tmp_path / "p.md")
    assert {"with cache", "without cache"} <= set(rows(text))


def test_detect(tmp_path):
    text = run_script("detect.py", tmp_path / "d.md")
    assert {"torso detect", "plain FCOS loop"} <= set(rows(text))
    assert "mAP .5:.95 torso - plain" in text


def write_idx(folder: Path, images: str, labels: str, per_class: int, seed: int) -> None:
    """Tiny Fashion-MNIST-like idx files: `per_class` random 28x28 images of each class."""
    generator = np.random.default_rng(seed)
    count = 10 * per_class
    pixels = generator.integers(0, 256, (count, 28, 28), dtype=np.uint8)
    targets = np.arange(count, dtype=np.uint8) % 10
    with gzip.open(folder / images, "wb") as file:
        file.write(struct.pack(">IIII", 2051, count, 28, 28) + pixels.tobytes())
    with gzip.open(folder / labels, "wb") as file:
        file.write(struct.pack(">II", 2049, count) + targets.tobytes())


def test_accuracy(tmp_path):
    write_idx(tmp_path, "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 4, 0)
    write_idx(tmp_path, "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 2, 1)
    options = ("--contenders", "torso", "--data-dir", str(tmp_path))
    text = run_script("accuracy.py", tmp_path / "a.md", *options)
    assert "torso" in rows(text) and "fastai" not in rows(text)


def test_defaults(tmp_path):
    text = run_script("defaults.py", tmp_path / "r.md", "--work", str(tmp_path / "work"))
    assert "fashion-mnist" in rows(text)


def test_startup(tmp_path):
    text = run_script("startup.py", tmp_path / "s.md")
    assert {"python -c pass", "import torso", "torso predict (2 images)"} <= set(rows(text))
    assert "imports" in rows(text)


def test_run_all_runs_scripts_that_exist_with_recipes_that_exist():
    sys.path.insert(0, str(BENCHMARKS))
    import defaults

    text = (BENCHMARKS / "run_all.sh").read_text()
    names = [line.split()[1] for line in text.splitlines() if line.startswith("run ")]
    scripts = {path.stem for path in BENCHMARKS.glob("*.py")} - {"harness", "contenders"}
    assert set(names) == scripts  # every benchmark, each once
    recipes = [part for part in text.split('"')[1::2] if "lr" in part]
    assert recipes and all(recipe in defaults.ALL_RECIPES for recipe in recipes)
