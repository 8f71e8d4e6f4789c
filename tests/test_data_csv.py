"""Labels CSVs: where the CSV is found, what its rows may name, and unreadable CSV files."""

from __future__ import annotations

import numpy as np
import pytest
from data_builders import noise_image, write_csv

from torso.cli import main
from torso.data import DataCheckError, check_data, load_data
from torso.errors import TorsoError


def _tagged(folder, count=6):
    """`folder/<i>.png` with a `labels.csv` of multilabel tags."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        noise_image(i).save(folder / f"{i}.png")
    tags = ["sky", "sky sea", "sea", "tree", "sky tree", "sea"]
    return write_csv(
        folder / "labels.csv", [["file", "tags"]] + [[f"{i}.png", tags[i]] for i in range(count)]
    )


@pytest.mark.parametrize(
    "data, csv",
    [
        ("data/multi", None),  # the default labels.csv
        ("data/multi", "labels.csv"),  # a name inside DATA
        ("data/multi", "data/multi/labels.csv"),  # a path from the current folder
        ("data/multi/labels.csv", None),  # DATA is the CSV
        ("data/multi/labels.csv", "data/multi/labels.csv"),
    ],
)
def test_relative_data_and_csv_paths_are_read_from_the_current_folder(
    tmp_path, monkeypatch, capsys, data, csv
):
    _tagged(tmp_path / "data" / "multi")
    monkeypatch.chdir(tmp_path)
    dls = load_data(data, task="multilabel", csv=csv, size=16, batch_size=2, num_workers=0)
    assert dls.classes == ["sea", "sky", "tree"]
    assert len(dls.train_items) + len(dls.valid_items) == 6
    report = check_data(data, task="multilabel", csv=csv)
    assert report.ok, report.problems
    argv = ["check", data, "--task", "multilabel"] + (["--csv", csv] if csv else [])
    assert main(argv) == 0, capsys.readouterr().err
    assert "not found" not in capsys.readouterr().err


def test_relative_regression_csv_and_a_missing_csv_names_both_places(tmp_path, monkeypatch):
    folder = tmp_path / "ages"
    folder.mkdir()
    for i in range(4):
        noise_image(i).save(folder / f"{i}.png")
    write_csv(folder / "ages.csv", [["file", "age"]] + [[f"{i}.png", i] for i in range(4)])
    monkeypatch.chdir(tmp_path)
    dls = load_data("ages", task="regress", csv="ages/ages.csv", size=16, num_workers=0)
    assert dls.target_names == ["age"]
    with pytest.raises(TorsoError, match=r"'nope.csv' not found.*'ages/nope.csv'"):
        load_data("ages", task="regress", csv="nope.csv", size=16, num_workers=0)


def test_csv_rows_naming_files_outside_the_data_folder_are_refused(tmp_path, capsys):
    folder = tmp_path / "data"
    folder.mkdir()
    for i in range(4):
        noise_image(i).save(folder / f"{i}.png")
    noise_image(10).save(tmp_path / "secret.png")
    outside = tmp_path / "other" / "secret.png"
    outside.parent.mkdir()
    noise_image(11).save(outside)
    csv = write_csv(
        folder / "labels.csv",
        [["file", "label"], ["0.png", "a"], ["1.png", "b"], ["2.png", "a"], ["3.png", "b"]]
        + [["../secret.png", "a"], [str(outside), "b"], [str(folder / "0.png"), "a"]],
    )
    report = check_data(csv, num_workers=1)
    outside_problems = [p for p in report.problems if p.kind == "file outside the data folder"]
    assert outside_problems[0].file == tmp_path / "secret.png"
    assert outside_problems[1].file == outside
    assert "'labels.csv' line 6" in outside_problems[0].reason
    assert "'labels.csv' line 7" in outside_problems[1].reason
    assert "--allow-outside-paths" in outside_problems[0].reason
    with pytest.raises(DataCheckError, match="outside the data folder"):
        load_data(csv, size=16, batch_size=2, num_workers=0)
    # The absolute path inside the folder is a second listing of 0.png, not an outside path.
    assert {p.kind for p in report.problems} == {
        "file outside the data folder",
        "file listed twice",
    }

    allowed = check_data(csv, num_workers=1, allow_outside_paths=True)
    assert not [p for p in allowed.problems if "outside" in p.reason]
    dls = load_data(
        csv, size=16, batch_size=2, num_workers=0, allow_outside_paths=True, skip_bad=True
    )
    assert {outside, tmp_path / "secret.png"} <= set(dls.train_items + dls.valid_items)
    assert main(["check", str(csv)]) == 1
    assert "outside the data folder" in capsys.readouterr().out
    main(["check", str(csv), "--allow-outside-paths"])
    assert "outside the data folder" not in capsys.readouterr().out


def test_a_file_listed_twice_names_both_lines(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    for i in range(4):
        noise_image(i).save(folder / f"{i}.png")
    write_csv(
        folder / "labels.csv",
        [["file", "label"], ["0.png", "a"], ["1.png", "b"], ["2.png", "a"], ["3.png", "b"]]
        + [["./1.png", "b"], ["2.png", "b"]],
    )
    report = check_data(folder, csv="labels.csv", num_workers=1)
    twice = {p.reason for p in report.problems if p.kind == "file listed twice"}
    assert twice == {
        "listed twice in 'labels.csv': lines 3 and 6, with the same labels",
        "listed twice in 'labels.csv': lines 4 and 7, with different labels",
    }
    dls = load_data(folder, csv="labels.csv", size=16, batch_size=2, num_workers=0, skip_bad=True)
    assert sorted(p.name for p in dls.train_items + dls.valid_items) == ["0.png", "3.png"]


@pytest.mark.parametrize(
    "content",
    [
        bytes(np.random.default_rng(0).integers(0, 256, 600, dtype=np.uint8)),  # random bytes
        "file,label\nä.png,a\n".encode("latin-1"),  # not UTF-8
        b"file,label\n0.png,a\x00\x00\n",  # binary zeros
    ],
    ids=["random", "latin-1", "nul"],
)
def test_a_csv_that_is_not_text_is_one_line_naming_the_file(tmp_path, capsys, content):
    folder = tmp_path / "data"
    folder.mkdir()
    noise_image(0).save(folder / "0.png")
    (folder / "bad.csv").write_bytes(content)
    with pytest.raises(TorsoError, match="'.*bad.csv'") as caught:
        load_data(folder, csv="bad.csv", size=16, num_workers=0)
    assert "\n" not in str(caught.value)
    assert main(["check", str(folder), "--csv", "bad.csv"]) == 2
    err = capsys.readouterr().err
    assert "bad.csv" in err and "Traceback" not in err and err.count("\n") == 1


def test_min_image_size_is_a_load_data_keyword(tmp_path):
    root = tmp_path / "small"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(3):
            noise_image(ord(name) * 10 + i, 12, 10).save(root / name / f"{i}.png")
    with pytest.raises(DataCheckError, match=r"image too small \(12x10"):
        load_data(root, size=16, num_workers=0)
    dls = load_data(root, size=16, num_workers=0, min_image_size=8)
    assert len(dls.train_items) + len(dls.valid_items) == 6
    for bad in (0, -3, 2.5, True):
        with pytest.raises(TorsoError, match="min_image_size="):
            load_data(root, size=16, num_workers=0, min_image_size=bad)
