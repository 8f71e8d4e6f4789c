"""Every ```python example in README.md runs as written (in a folder with a small `photos/`).

Examples that need what a test cannot give (several processes, downloaded weights) are fenced as
```py instead, and are checked by the tests of their feature.
"""

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


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


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_example_runs(index, photos_folder):
    exec(compile(BLOCKS[index], f"README.md python example {index + 1}", "exec"), {})
