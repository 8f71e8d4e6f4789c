"""`torso train --task segment --architecture unet2015`: the 2015 U-Net from the command line,
saved and rebuilt from its run folder."""

from __future__ import annotations

import torch
from test_segment_task import write_shapes

from torso.checkpoint import load_model
from torso.cli import main
from torso.models.segmentation import UNet2015


def test_train_unet2015_from_the_command_line_and_load_it(tmp_path):
    data = write_shapes(tmp_path / "shapes", 10, size=32)
    out = tmp_path / "run"
    args = ["train", str(data), "--task", "segment", "--architecture", "unet2015", "--size", "32"]
    options = ["--batch-size", "4", "--epochs", "1", "--workers", "0", "--no-augment", "--quiet"]
    assert main([*args, *options, "--out", str(out)]) == 0
    model, config = load_model(out)
    assert isinstance(model, UNet2015) and model.padding
    assert config.task_options["architecture"] == "unet2015"
    with torch.no_grad():
        assert model(torch.rand(1, 3, 32, 32)).shape == (1, 3, 32, 32)
