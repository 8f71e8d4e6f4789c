"""Input checks: each kind of bad file gives a message naming it; `torso check` exit codes."""

from __future__ import annotations

import json
import shutil
import zlib

import numpy as np
import pytest
from data_builders import make_class_folders, make_segmentation, noise_image, write_csv
from PIL import Image, ImageFile

from torso.cli import main
from torso.data import DataCheckError, check_data, load_data, read_image
from torso.data import checks as checks_module
from torso.errors import TorsoError


def _reasons(report) -> dict[str, str]:
    return {problem.file.name: problem.reason for problem in report.problems}


@pytest.fixture
def messy(tmp_path):
    """Classification folders with one file of each problem kind, and well-formed oddities."""
    root = make_class_folders(tmp_path / "messy", {"cat": 4, "dog": 4})
    (root / "bird").mkdir()  # empty class
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "cat" / "zero.jpg").write_bytes(b"")
    jpeg = root / "dog" / "corrupt.jpg"
    noise_image(50).save(jpeg)
    jpeg.write_bytes(jpeg.read_bytes()[:20] + b"\x00garbage" * 50)
    png = root / "dog" / "truncated.png"
    noise_image(51, 64, 64).save(png)
    png.write_bytes(png.read_bytes()[:400])
    cut_jpeg = root / "dog" / "truncated.jpg"
    noise_image(52, 64, 64).save(cut_jpeg, quality=90)
    cut_jpeg.write_bytes(cut_jpeg.read_bytes()[:-600])
    noise_image(53, 4, 4).save(root / "cat" / "tiny.png")
    # Well-formed files in unusual modes and names: no problem expected.
    Image.fromarray(np.full((20, 20), 40000, np.uint16)).save(root / "cat" / "deep16.png")
    Image.new("RGBA", (20, 20), (0, 0, 255, 128)).save(root / "cat" / "alpha.png")
    Image.new("P", (20, 20), 3).save(root / "dog" / "palette.png")
    Image.new("CMYK", (20, 20), (0, 255, 255, 0)).save(root / "dog" / "cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6
    noise_image(54, 30, 20).save(root / "dog" / "rotated.jpg", exif=exif)
    noise_image(55).save(root / "cat" / "chat_été_猫.png")
    return root


def test_each_problem_names_its_file(messy):
    report = check_data(messy, num_workers=2)
    reasons = _reasons(report)
    assert "empty class folder" in reasons["bird"]
    assert "not an image file (.txt)" in reasons["notes.txt"]
    assert "empty file (0 bytes)" in reasons["zero.jpg"]
    assert "not a readable image" in reasons["corrupt.jpg"] or "corrupt" in reasons["corrupt.jpg"]
    assert "truncated" in reasons["truncated.png"]
    assert "truncated" in reasons["truncated.jpg"]
    assert "image too small (4x4" in reasons["tiny.png"]
    fine = {"deep16.png", "alpha.png", "palette.png", "cmyk.jpg", "rotated.jpg", "chat_été_猫.png"}
    assert not fine & set(reasons)
    assert len(report.problems) == 7
    assert {"I;16", "RGBA", "P", "CMYK"} <= set(report.modes)
    assert (20, 30) in report.sizes  # EXIF-rotated size is reported as displayed
    assert not report.ok
    text = str(report)
    assert "7 problem(s)" in text and "truncated.png" in text and "cat" in text


def test_load_data_stops_with_the_list_or_skips_and_counts(messy):
    with pytest.raises(DataCheckError) as caught:
        load_data(messy, size=16, batch_size=4, num_workers=0)
    message = str(caught.value)
    assert "7 problem(s)" in message and "zero.jpg" in message and "--skip-bad" in message
    dls = load_data(messy, size=16, batch_size=4, num_workers=0, skip_bad=True)
    assert len(dls.skipped) == 7
    used = {path.name for path in dls.train_items + dls.valid_items}
    assert "zero.jpg" not in used and "truncated.png" not in used and "tiny.png" not in used
    assert {"deep16.png", "cmyk.jpg", "chat_été_猫.png"} <= used
    assert dls.classes == ["cat", "dog"]
    for images, _ in dls.train:
        assert images.shape[1:] == (3, 16, 16)


def test_segmentation_mask_problems(tmp_path):
    root = make_segmentation(tmp_path / "seg", count=5, codes=3)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "masks" / "1.png")  # wrong size
    bad_values = np.zeros((40, 48), np.uint8)
    bad_values[0, 0] = 7
    Image.fromarray(bad_values).save(root / "masks" / "2.png")
    (root / "masks" / "3.png").unlink()
    report = check_data(root, task="segment", num_workers=1)
    reasons = _reasons(report)
    assert reasons["1.png"] == "mask is 10x10 but its image '1.jpg' is 48x40"
    assert "mask value 7 not in the 3 codes" in reasons["2.png"]
    assert "mask missing" in reasons["3.jpg"]
    assert len(report.problems) == 3
    assert report.modes == {"RGB": 4}  # images whose mask is bad are still counted
    summary = report.summary()
    assert "background" in summary and "box" in summary and "%" in summary


def test_identical_files_in_train_and_valid_are_leakage(tmp_path):
    root = tmp_path / "split"
    make_class_folders(root / "train", {"a": 3, "b": 3})
    make_class_folders(root / "valid", {"a": 1, "b": 1}, start_seed=100)
    shutil.copy(root / "train" / "a" / "0.png", root / "valid" / "b" / "copy.png")
    calls = []
    report = check_data(root, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (9, 9) and len(calls) == 9  # 6 training and 3 validation images
    assert len(report.problems) == 1
    problem = report.problems[0]
    assert problem.file.name == "copy.png" and "leakage" in problem.reason
    assert "0.png" in problem.reason
    assert report.counts["valid"]["b"] == 2 and report.counts["train"]["a"] == 3


def test_cli_exit_codes(tmp_path, messy, capsys):
    clean = make_class_folders(tmp_path / "clean", {"x": 3, "y": 3})
    assert main(["check", str(clean)]) == 0
    assert "no problems found" in capsys.readouterr().out
    assert main(["check", str(messy)]) == 1
    out = capsys.readouterr().out
    assert "truncated.png" in out and "notes.txt" in out
    assert main(["check", str(messy), "--json"]) == 1
    document = json.loads(capsys.readouterr().out)
    assert len(document["problems"]) == 7
    assert main(["check", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["check", str(clean), "--task", "regress"]) == 2  # no labels.csv
    seg = make_segmentation(tmp_path / "seg", count=3)
    assert main(["check", str(seg)]) == 0  # auto-detected as segmentation
    assert "mask pixels" in capsys.readouterr().out


def _corrupt_idat(path, fix_crc: bool) -> None:
    """Flip 16 bytes in the middle of the first IDAT chunk of a PNG; optionally make its CRC
    right again (PIL does not check the CRC of image data, so both variants open fine)."""
    data = bytearray(path.read_bytes())
    position = 8  # after the PNG signature
    while True:
        length = int.from_bytes(data[position : position + 4], "big")
        kind = bytes(data[position + 4 : position + 8])
        if kind == b"IDAT":
            break
        position += 12 + length
    start = position + 8
    for i in range(start + length // 2, start + length // 2 + 16):
        data[i] ^= 0xFF
    if fix_crc:
        crc = zlib.crc32(bytes(data[position + 4 : start + length]))
        data[start + length : start + length + 4] = crc.to_bytes(4, "big")
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("fix_crc", [False, True])
def test_png_corrupt_inside_its_image_data_is_named(tmp_path, capsys, fix_crc):
    root = make_class_folders(tmp_path / "png", {"x": 3, "y": 3}, size=(64, 64))
    bad = root / "y" / "1.png"
    _corrupt_idat(bad, fix_crc)
    with pytest.raises(TorsoError, match="1.png"):
        read_image(bad)  # what training does with it
    report = check_data(root, num_workers=1)
    assert [problem.file for problem in report.problems] == [bad]
    assert "corrupt" in report.problems[0].reason
    assert main(["check", str(root)]) == 1
    assert str(bad) in capsys.readouterr().out


@pytest.mark.parametrize("error", [MemoryError, AttributeError])
def test_errors_that_are_not_the_files_fault_propagate(tmp_path, monkeypatch, error):
    root = make_class_folders(tmp_path / "fine", {"x": 2, "y": 2})

    def broken_load(self):
        raise error("not a decoding problem")

    monkeypatch.setattr(ImageFile.ImageFile, "load", broken_load)
    with pytest.raises(error, match="not a decoding problem"):
        check_data(root, num_workers=1)


@pytest.mark.parametrize("error", [MemoryError, AttributeError])
def test_errors_reading_a_mask_that_are_not_the_files_fault_propagate(tmp_path, monkeypatch, error):
    root = make_segmentation(tmp_path / "seg", count=2)

    def broken(image, path):
        raise error("not a mask problem")

    monkeypatch.setattr(checks_module, "mask_to_array", broken)
    with pytest.raises(error, match="not a mask problem"):
        check_data(root, task="segment", num_workers=1)


def test_check_groups_repeated_problems_and_counts_them_by_kind(tmp_path, capsys):
    root = make_class_folders(tmp_path / "small", {"a": 3, "b": 3})
    for i in range(40):
        noise_image(200 + i, 8, 8).save(root / "a" / f"tiny{i:02d}.png")
    (root / "b" / "notes.txt").write_text("x")
    (root / "b" / "readme.md").write_text("x")
    assert main(["check", str(root)]) == 1
    out = capsys.readouterr().out
    assert out.count("image too small") == 5 + 2  # five files, the group's title, the count
    assert "... and 35 more files with the same problem" in out
    assert out.strip().splitlines()[-1] == (
        "42 problem(s): 40 image too small, 2 not an image file"
    )
    assert main(["check", str(root), "--all"]) == 1
    assert capsys.readouterr().out.count("tiny") == 40
    with pytest.raises(DataCheckError) as caught:
        load_data(root, size=16, num_workers=0)
    message = str(caught.value)
    assert message.startswith("42 problem(s): 40 image too small, 2 not an image file")
    assert "... and 37 more files with the same problem" in message
    dls = load_data(root, size=16, num_workers=0, skip_bad=True)
    assert "skipped 42 bad file(s): 40 image too small, 2 not an image file" in dls.describe()


def test_multilabel_check_counts_images_and_labels_apart(tmp_path, capsys):
    for i in range(6):
        noise_image(i).save(tmp_path / f"{i}.png")
    tags = ["sky sea", "sky sea tree", "sea", "", "sky", "sky tree"]
    write_csv(
        tmp_path / "labels.csv", [["file", "tags"]] + [[f"{i}.png", t] for i, t in enumerate(tags)]
    )
    report = check_data(tmp_path, task="multilabel", valid_pct=0.0)
    assert report.images == {"train": 6}
    assert report.counts["train"] == {"sky": 4, "sea": 3, "tree": 2, "(no label)": 1}
    summary = report.summary()
    assert "images: train 6" in summary and "labels per class" in summary
    assert main(["check", str(tmp_path), "--task", "multilabel", "--json", "--valid-pct", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == {"train": 6}


def test_a_stray_mask_value_without_codes_is_refused_not_made_a_class(tmp_path, capsys):
    root = make_segmentation(tmp_path / "seg", count=4, codes=None)
    report = check_data(root, task="segment", num_workers=1)
    assert report.ok  # values 0, 1, 2: classes "0", "1", "2"
    stray = np.array(Image.open(root / "masks" / "3.png"))
    stray[0, 0] = 200
    Image.fromarray(stray).save(root / "masks" / "3.png")
    report = check_data(root, task="segment", num_workers=1)
    [problem] = report.problems
    assert problem.kind == "mask values without codes"
    assert "the masks hold the values 0, 1, 2, 200" in problem.reason
    assert "201 classes" in problem.reason and "codes.txt" in problem.reason
    assert "200 first in '3.png'" in problem.reason
    assert "mask values: 0, 1, 2, 200" in report.summary()
    with pytest.raises(DataCheckError, match="codes.txt"):
        load_data(root, task="segment", size=16, num_workers=0)
    with pytest.raises(TorsoError, match="values 0, 1, 2, 200"):
        load_data(root, task="segment", size=16, num_workers=0, skip_bad=True)
    assert main(["check", str(root)]) == 1
    assert "--codes" in capsys.readouterr().out
    dls = load_data(
        root, task="segment", size=16, num_workers=0, codes=[str(i) for i in range(201)]
    )
    assert dls.num_outputs == 201  # with codes, the user said so
