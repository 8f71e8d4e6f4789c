"""`torso predict` on real folders: an unreadable image is reported on one line and left out,
the others are predicted and written (exit 0, or 1 with --strict); options parse in any order;
a device the machine lacks is one line and exit 2."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
from PIL import Image
from test_predictor import saved_run

from torso.cli import main


def write_images(folder, names=("a.png", "c.png")):
    """Readable 40x60 RGB images, and the unreadable files a real folder collects: a truncated
    PNG, an empty file, and a text file with an image's extension."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(folder / name)
    (folder / "b_truncated.png").write_bytes((folder / names[0]).read_bytes()[:100])
    (folder / "d_empty.png").write_bytes(b"")
    (folder / "e_notes.jpg").write_text("not an image\n")
    return folder


BAD = {
    "b_truncated.png": "truncated image",
    "d_empty.png": "empty file (0 bytes)",
    "e_notes.jpg": "not a readable image",
}


def assert_bad_files_reported(err: str) -> None:
    """Each unreadable file on one line of its own, with what is wrong, and no traceback."""
    assert "Traceback" not in err
    for name, reason in BAD.items():
        lines = [line for line in err.splitlines() if name in line]
        assert len(lines) == 1 and reason in lines[0], (name, err)


def test_predict_reports_each_unreadable_image_and_predicts_the_others(tmp_path, capsys):
    run = saved_run(tmp_path / "run")
    images = write_images(tmp_path / "images")
    out = tmp_path / "predictions.csv"
    assert main(["predict", str(run), str(images), "--out", str(out)]) == 0
    assert_bad_files_reported(capsys.readouterr().err)
    rows = list(csv.DictReader(out.open()))
    assert [row["path"].rsplit("/", 1)[-1] for row in rows] == ["a.png", "c.png"]
    out.unlink()
    # --strict: the same report and the same file, and exit status 1.
    assert main(["predict", str(run), str(images), "--out", str(out), "--strict"]) == 1
    assert_bad_files_reported(capsys.readouterr().err)
    assert len(list(csv.DictReader(out.open()))) == 2
    # Nothing readable at all: nothing is written and the exit status is 1.
    assert main(["predict", str(run), str(images / "d_empty.png"), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "nothing to predict" in err and "Traceback" not in err


def test_predict_options_may_come_before_the_images(tmp_path, capsys):
    run = saved_run(tmp_path / "run")
    shutil.copytree(run, run / "best")
    images = write_images(tmp_path / "images")
    a, c = images / "a.png", images / "c.png"
    assert main(["predict", str(run), "--best", str(a)]) == 0
    assert capsys.readouterr().out.count("a.png") == 1
    assert main(["predict", str(run), str(a), "--tta", str(c), "--batch-size", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("path,") and [line.split(",")[0] for line in out[1:]] == [
        str(a),
        str(c),
    ]
    assert main(["predict", "--best", str(run)]) == 2
    assert "give the images" in capsys.readouterr().err


def test_segmentation_predict_leaves_out_unreadable_images(tmp_path, capsys):
    run = saved_run(tmp_path / "run", "segment", 3, ["a", "b", "c"], decoder_width=16)
    images = write_images(tmp_path / "images")
    out = tmp_path / "masks"
    assert main(["predict", str(run), str(images), "--out", str(out)]) == 0
    assert_bad_files_reported(capsys.readouterr().err)
    assert sorted(path.name for path in out.glob("*_mask.png")) == ["a_mask.png", "c_mask.png"]
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert [row["mask"] for row in rows] == ["a_mask.png", "c_mask.png"]
    assert main(["predict", str(run), str(images), "--out", str(out), "--strict"]) == 1


def test_siamese_pair_with_an_unreadable_image_is_reported_not_a_traceback(tmp_path, capsys):
    run = saved_run(tmp_path / "run", "siamese", 2, ["different", "same"])
    images = write_images(tmp_path / "images")
    pair = ["--pair", str(images / "a.png"), str(images / "b_truncated.png")]
    assert main(["predict", str(run), *pair]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "nothing to predict" in err
    assert [line for line in err.splitlines() if "b_truncated.png: truncated image" in line]
    assert main(["predict", str(run), "--pair", str(images / "a.png"), str(images / "c.png")]) == 0


@pytest.mark.parametrize(
    "device, message",
    [
        ("banana", "--device 'banana' is not a device"),
        ("meta", "--device 'meta': torso runs models on cpu, cuda"),
        ("cuda:99", "--device 'cuda:99': this machine has"),
    ],
)
def test_a_device_the_machine_lacks_is_one_line(tmp_path, capsys, device, message):
    run = saved_run(tmp_path / "run")
    images = write_images(tmp_path / "images")
    out = tmp_path / "vectors.npy"
    for command in (
        ["predict", str(run), str(images / "a.png"), "--device", device],
        ["embed", str(run), str(images / "a.png"), "--out", str(out), "--device", device],
    ):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (command, err)
    assert not out.exists()
