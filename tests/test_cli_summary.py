"""`torso summary`: the table a user reads, and its exit codes."""

import json
import subprocess
import sys

import torso
from torso.cli import main
from torso.tools.summary import summarize


def test_summary_resnet34_shows_the_shapes(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["summary", "resnet34", "--classes", "37", "--size", "224"]) == 0
    out = capsys.readouterr().out
    for text in ["3×224×224", "512×7×7", "1024×1×1", "cut: resnet34", "21,830,976", "546,304"]:
        assert text in out, text


def test_summary_as_structured_object():
    summary = summarize(torso.create_model("resnet34", 37), 224)
    shapes = {row.name: row.shape for row in summary.rows}
    assert shapes["image"] == (3, 224, 224)
    assert shapes["layer4"] == (512, 7, 7)
    head_shapes = [row.shape for row in summary.rows if row.section == "head"]
    assert head_shapes[0] == (1024, 1, 1) and head_shapes[-1] == (37,)
    assert sum(row.parameters for row in summary.rows) == summary.total
    assert [g.parameters for g in summary.groups] == [1_347_904, 19_936_768, 546_304]
    assert summary.groups[-1].trainable_when_frozen == 546_304


def test_summary_json_and_in_channels(capsys):
    assert (
        main(
            [
                "summary",
                "test_resnet",
                "--classes",
                "2",
                "--size",
                "64",
                "--in-channels",
                "1",
                "--json",
            ]
        )
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert data["rows"][0]["shape"] == [1, 64, 64]
    assert data["rows"][-1]["shape"] == [2]


def test_unknown_backbone_exits_2_with_suggestions():
    result = subprocess.run(
        [sys.executable, "-m", "torso", "summary", "resnt34"], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "resnet34" in result.stderr
    assert "Traceback" not in result.stderr


def test_summary_segment_shows_fastai_parity_and_the_capped_decoder(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    args = ["summary", "tv:resnet34", "--classes", "3", "--size", "64", "--task", "segment"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "41,221,268" in out  # fastai's DynamicUnet on the same body
    assert "capped at 256" in out
    assert "3×64×64" in out  # output at the input's size


def test_summary_segment_unet2015_shows_the_papers_parameter_count(capsys):
    args = ["summary", "unet2015", "--task", "segment", "--architecture", "unet2015"]
    assert main([*args, "--classes", "2", "--in-channels", "1", "--size", "64", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["total"] == 31_030_658 and data["body"] == 18_842_048
    assert data["rows"][-1]["shape"] == [2, 64, 64]  # padded: the input's size
    assert [group["parameters"] for group in data["groups"]] == [18_842_048, 12_188_610]
