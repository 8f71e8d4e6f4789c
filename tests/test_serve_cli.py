"""`torso serve`'s command line: what cannot be served is one line and exit 2, before any
server starts (a folder that is no run, a port in use, options that do not go together)."""

from __future__ import annotations

import pytest
from serve_helpers import saved_run

from torso.cli import main
from torso.tools.serve import listen


def test_a_folder_that_is_no_run_is_named(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "missing' is not a run folder" in err and "Traceback" not in err


def test_a_port_in_use_is_named(tmp_path, capsys):
    run = saved_run(tmp_path / "run")
    taken = listen("127.0.0.1", 0)
    try:
        port = taken.getsockname()[1]
        assert main(["serve", str(run), "--port", str(port)]) == 2
    finally:
        taken.close()
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_onnx_runs_on_the_cpu_only(tmp_path, capsys):
    run = saved_run(tmp_path / "run")
    assert main(["serve", str(run), "--onnx", "model.onnx", "--device", "cuda"]) == 2
    assert "--device: an --onnx model runs on the CPU" in capsys.readouterr().err


def test_numbers_are_checked_by_the_parser(tmp_path, capsys):
    for option, value in (("--port", "-1"), ("--max-upload-mb", "0"), ("--max-images", "0")):
        with pytest.raises(SystemExit) as exit:
            main(["serve", str(tmp_path), option, value])
        assert exit.value.code == 2 and f"argument {option}" in capsys.readouterr().err
