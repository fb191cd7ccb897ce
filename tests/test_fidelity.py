"""Images are read as the instrument wrote them: EXIF orientation applied, 12-bit and float data keep their levels."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from data.preprocess import Preprocess, decode, load_image

WHOLE = Preprocess(image_size=64, crop=1.0)


def test_an_exif_rotated_jpeg_arrives_upright(tmp_path: Path) -> None:
    stored = np.zeros((20, 40, 3), np.uint8)  # 40 wide, 20 high, as the camera stored it
    stored[:, :20] = (220, 20, 20)  # left half red
    stored[:, 20:] = (20, 20, 220)  # right half blue
    img = Image.fromarray(stored)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": the left edge is the top
    img.save(tmp_path / "photo.jpg", exif=exif, quality=95)

    decoded = decode(tmp_path / "photo.jpg")
    assert decoded.rgb.size == (20, 40) and decoded.size == (40, 20) and decoded.orientation == 6
    pixels = load_image(tmp_path / "photo.jpg", Preprocess(image_size=16, crop=1.0))  # what train, eval, predict see
    top, bottom = pixels[:6].reshape(-1, 3).mean(0), pixels[-6:].reshape(-1, 3).mean(0)
    assert top[0] > 150 > top[2] and bottom[2] > 150 > bottom[0]


def gradient(high: float, dtype: type) -> np.ndarray:
    """64 x 64 ramp from 0 to ``high``: 4096 distinct values."""
    return np.linspace(0, high, 64 * 64).reshape(64, 64).astype(dtype)


def test_12_bit_data_in_a_16_bit_png_keeps_its_contrast(tmp_path: Path) -> None:
    Image.fromarray(gradient(4095, np.uint16)).save(tmp_path / "twelve.png")
    with Image.open(tmp_path / "twelve.png") as img:
        assert img.mode.startswith("I;16")  # really stored as 16 bits
    pixels = load_image(tmp_path / "twelve.png", WHOLE)
    assert len(np.unique(pixels)) > 200 and pixels.max() == 255  # not 0-16 (the old divide by 257)


def test_a_float_tiff_in_0_1_keeps_its_contrast(tmp_path: Path) -> None:
    Image.fromarray(gradient(1.0, np.float32)).save(tmp_path / "float.tif")
    pixels = load_image(tmp_path / "float.tif", WHOLE)
    assert len(np.unique(pixels)) > 200 and pixels.max() == 255


def test_full_range_16_bit_data_keeps_its_scale(tmp_path: Path) -> None:
    ramp = gradient(65535, np.uint16)
    Image.fromarray(ramp).save(tmp_path / "sixteen.tif")
    pixels = np.asarray(decode(tmp_path / "sixteen.tif").rgb)[..., 0]
    assert np.abs(pixels.astype(int) - np.round(ramp / 257)).max() <= 1  # as before: 65535 -> 255
