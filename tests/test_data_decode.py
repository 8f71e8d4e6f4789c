"""Decoding: every file mode becomes the model's channel count in the documented way."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from data_builders import noise_image
from PIL import Image

from torso.data import load_images, read_image, read_mask
from torso.errors import TorsoError


def test_sixteen_bit_png_is_scaled_to_eight_bits(tmp_path):
    values = np.array([[0, 257 * 100, 65535, 257 * 200]], dtype=np.uint16).repeat(4, axis=0)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    gray = read_image(path, in_channels=1)
    assert gray.shape == (1, 4, 4) and gray.dtype == torch.uint8
    assert gray[0, 0].tolist() == [0, 100, 255, 200]
    rgb = read_image(path, in_channels=3)
    assert rgb.shape == (3, 4, 4) and torch.equal(rgb[0], rgb[2])


def test_rgba_is_composited_over_white_or_kept(tmp_path):
    pixels = np.zeros((2, 2, 4), np.uint8)
    pixels[0, 0] = (255, 0, 0, 255)  # opaque red
    pixels[0, 1] = (0, 0, 0, 0)  # fully transparent black
    path = tmp_path / "alpha.png"
    Image.fromarray(pixels, mode="RGBA").save(path)
    rgb = read_image(path, 3)
    assert rgb[:, 0, 0].tolist() == [255, 0, 0]
    assert rgb[:, 0, 1].tolist() == [255, 255, 255]
    rgba = read_image(path, 4)
    assert rgba.shape == (4, 2, 2) and rgba[3, 0, 1] == 0 and rgba[3, 0, 0] == 255


def test_palette_png_looks_up_colours_and_transparency(tmp_path):
    image = Image.new("P", (3, 1))
    image.putpalette([0, 0, 255, 0, 255, 0] + [0] * (256 * 3 - 6))
    image.putdata([0, 1, 1])
    path = tmp_path / "palette.png"
    image.save(path)
    rgb = read_image(path, 3)
    assert rgb[:, 0, 0].tolist() == [0, 0, 255] and rgb[:, 0, 2].tolist() == [0, 255, 0]
    transparent = tmp_path / "palette_transparent.png"
    image.save(transparent, transparency=0)
    assert read_image(transparent, 3)[:, 0, 0].tolist() == [255, 255, 255]
    assert read_image(transparent, 4)[3].tolist() == [[0, 255, 255]]


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = tmp_path / "print.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path, quality=95)  # red ink
    rgb = read_image(path, 3).float().mean(dim=(1, 2))
    assert rgb[0] > 200 and rgb[1] < 60 and rgb[2] < 60


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)  # stored: left half red, right half blue
    pixels[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "phone.jpg"
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    image = read_image(path, 3)
    assert image.shape == (3, 40, 20)  # portrait once turned
    top, bottom = image[:, :10].float().mean(dim=(1, 2)), image[:, -10:].float().mean(dim=(1, 2))
    assert top[0] > 200 and top[2] < 60  # the left (red) half is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_grayscale_to_three_and_rgb_to_one_channel(tmp_path):
    gray_path = tmp_path / "gray.png"
    noise_image(1, 8, 6, mode="L").save(gray_path)
    three = read_image(gray_path, 3)
    assert three.shape == (3, 6, 8) and torch.equal(three[0], three[1])
    rgb_path = tmp_path / "colour.png"
    Image.new("RGB", (4, 4), (255, 0, 0)).save(rgb_path)
    assert read_image(rgb_path, 1)[0, 0, 0] == 76  # ITU-R 601 luma of pure red


def test_non_ascii_file_name_reads(tmp_path):
    path = tmp_path / "chat_noir_été_猫.png"
    noise_image(3).save(path)
    assert read_image(path, 3).shape == (3, 32, 40)
    assert load_images([path], size=16).shape == (1, 3, 16, 16)


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty.jpg", b"", "empty file"),
        ("text.jpg", b"this is not a picture", "not a readable image"),
    ],
)
def test_unreadable_files_raise_naming_the_file(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(TorsoError, match=reason) as caught:
        read_image(path)
    assert name in str(caught.value)


def test_truncated_png_raises_naming_the_file(tmp_path):
    path = tmp_path / "cut.png"
    noise_image(4, 64, 64).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TorsoError, match="truncated") as caught:
        load_images([path], size=16)
    assert "cut.png" in str(caught.value)


def test_masks_keep_their_values_and_reject_colour(tmp_path):
    values = np.array([[0, 1, 2, 255]], np.uint8)
    path = tmp_path / "mask.png"
    Image.fromarray(values).save(path)
    assert read_mask(path).tolist() == [[0, 1, 2, 255]]
    colour = tmp_path / "colour_mask.png"
    Image.fromarray(np.array([[[255, 0, 0], [0, 0, 0]]], np.uint8)).save(colour)
    with pytest.raises(TorsoError, match="colour_mask.png.*single-channel"):
        read_mask(colour)
