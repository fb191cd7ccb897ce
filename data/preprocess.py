"""From a file on disk to the pixels the model sees: decoding, the cell crop, the fundus disk, resizing."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageFilter

from data.sources import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PREPROCESS_MODES = ("center", "fundus")
CELL_THRESHOLD = 16  # a pixel whose brightest channel exceeds this (of 255) belongs to the cell
CROP_MARGIN = 0.02  # added to the measured crop, as a fraction of the shorter side ...
CROP_BORDER_PX = 3  # ... or enough for this many black output pixels on each side, if more
CROP_SAMPLE = 256  # training images measured by fit_preprocess
FUNDUS_THRESHOLD = 12  # retina: brightest channel above this (of 255), after a 3x3 median, is the disk
FUNDUS_MASK_SIDE = 512  # the disk is found on a copy reduced to at most about this many pixels a side


@dataclass(frozen=True)
class Preprocess:
    """Everything needed to turn a file into the model's input; stored in checkpoints."""

    image_size: int = 224
    crop: float = 1.0  # side of the centred square kept, as a fraction of the shorter side
    mode: str = "center"  # "center" (cells) or "fundus" (crop to the retina disk)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def pixel_key(self) -> dict:
        """The settings that change the cached pixels (mean/std do not)."""
        return {"image_size": self.image_size, "crop": round(self.crop, 6), "mode": self.mode}


# EXIF orientation (tag 274) -> the transpose that makes the picture upright (as ImageOps.exif_transpose)
ORIENTATION_TAG = 0x0112
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}


@dataclass(frozen=True)
class Decoded:
    """A decoded file: upright RGB pixels and what the file held (for audit.py's per-split summary)."""

    rgb: Image.Image
    mode: str  # PIL mode as stored: "RGB", "L", "I;16", "F", ...
    bits: int  # bits per sample as stored (8, 16, 32)
    size: tuple[int, int]  # (width, height) as stored, before the EXIF rotation
    orientation: int | None  # the EXIF orientation tag, None if the file has none


def wide_white_level(values: np.ndarray, mode: str) -> tuple[float, float]:
    """(black, white) of a 16-bit, 32-bit or float image: the values that become 0 and 255.

    The rule keeps an instrument's scale: integers are divided by the top of the smallest bit
    depth that holds the image's brightest value (at least 8 bits): 12-bit data in a 16-bit PNG
    or TIFF (0-4095) -> /4095, full 16-bit -> /65535 (the old /257), 10-bit -> /1023. Black stays
    black (the cell threshold and the fundus mask depend on it) and every image of one depth gets
    the same scale, unlike a per-image min/max stretch, which brightens dim images and their noise.
    Floats in [0, 1] are taken as that range; other floats (and negative integers) have no
    known scale and are stretched from their own minimum to maximum.
    """
    finite = values[np.isfinite(values)]
    if not finite.size:
        return 0.0, 1.0
    low, high = float(finite.min()), float(finite.max())
    if mode == "F" and low >= 0.0 and high <= 1.0:
        return 0.0, 1.0
    if mode != "F" and low >= 0:
        return 0.0, float(2 ** max(8, int(high).bit_length()) - 1)
    return low, high if high > low else low + 1.0


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB: wide samples by ``wide_white_level``, transparency composited onto black."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        wide = np.asarray(img).astype(np.float64)
        black, white = wide_white_level(wide, "F" if img.mode == "F" else "I")
        scaled = np.nan_to_num((wide - black) * (255.0 / (white - black)), nan=0.0)
        return Image.fromarray(np.clip(scaled + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = np.asarray(img.convert("RGBA")).astype(np.uint16)
        return Image.fromarray(((rgba[..., :3] * rgba[..., 3:] + 127) // 255).astype(np.uint8))
    return img if img.mode == "RGB" else img.convert("RGB")


def _bits(mode: str) -> int:
    if mode == "1":
        return 1
    if mode.startswith("I;16"):
        return 16
    return 32 if mode in ("I", "F") else 8


def _orientation(img: Image.Image) -> int | None:
    """The EXIF orientation tag, None if absent or unreadable (a damaged EXIF block does not spoil the pixels)."""
    try:
        value = img.getexif().get(ORIENTATION_TAG)
    except (OSError, SyntaxError, ValueError, TypeError, KeyError):
        return None
    return value if isinstance(value, int) else None


def decode(path: Path, draft_side: int | None = None) -> Decoded:
    """Decode ``path`` fully, upright (EXIF orientation applied), into RGB; DataError naming the file.

    Every path that reads pixels (training, evaluation, predict, Grad-CAM, audit) comes here.
    """
    try:
        with Image.open(path) as img:
            if draft_side and img.format == "JPEG":
                img.draft("RGB", (draft_side, draft_side))  # decode big JPEGs at a reduced scale
            img.load()
            orientation = _orientation(img)
            rgb = _to_rgb(img)
            mode, size = img.mode, img.size
    except FileNotFoundError as exc:
        raise DataError(f"image {path} not found") from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot decode image {path}: {exc}") from exc
    if orientation in _UPRIGHT:
        rgb = rgb.transpose(_UPRIGHT[orientation])
    return Decoded(rgb, mode, _bits(mode), size, orientation)


def open_rgb(path: Path, draft_side: int | None = None) -> Image.Image:
    """Decode ``path`` fully into an upright RGB image; DataError naming the file if it cannot be read."""
    return decode(path, draft_side).rgb


def _centre_box(width: int, height: int, crop: float) -> tuple[float, float, float, float]:
    side = crop * min(width, height)
    return ((width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2)


def _disk_centre(start: int, end: int, length: int, diameter: int, slack: int) -> float:
    """Centre along one axis of a disk of ``diameter`` seen from ``start`` to ``end`` of ``[0, length)``.

    ``slack``: how much shorter than the diameter a whole disk may measure (the mask's resolution).
    """
    whole = end - start >= diameter - slack
    if whole or (start == 0) == (end == length):
        return (start + end) / 2  # whole, or cut alike on both sides (the camera's field stop)
    return end - diameter / 2 if start == 0 else start + diameter / 2  # cut by one edge of the photo


def _disk_span(profile: np.ndarray) -> tuple[int, int] | None:
    """[start, end) of the rows (or columns) of the disk: the unbroken run around the fullest one.

    A row counts if it holds over 5% of the fullest row's disk pixels (a disk's chord is that
    short only within 0.2% of its radius of the rim); specks apart from the disk are left out.
    """
    peak = int(profile.argmax())
    if profile[peak] == 0:
        return None
    gaps = np.flatnonzero(profile <= 0.05 * profile[peak])
    before, after = gaps[gaps < peak], gaps[gaps > peak]
    return (int(before[-1]) + 1 if len(before) else 0), (int(after[0]) if len(after) else len(profile))


def fundus_box(img: Image.Image) -> tuple[int, int, int, int]:
    """The square (left, top, right, bottom) around the retina disk; it may reach outside the photo.

    The disk is where the brightest channel exceeds FUNDUS_THRESHOLD on a copy reduced to about
    FUNDUS_MASK_SIDE pixels (box-averaged) and median-filtered, so JPEG noise does not count, nor
    do specks apart from the disk (``_disk_span``). Its diameter is the longer extent; along an
    axis where one edge of the photo cuts the disk, the centre is measured from the uncut side.
    An image with no disk (all black) gives the whole photo padded to a square.
    """
    width, height = img.size
    factor = max(1, round(max(width, height) / FUNDUS_MASK_SIDE))
    small = np.asarray(img.reduce(factor) if factor > 1 else img).max(axis=2)
    disk = np.asarray(Image.fromarray(small).filter(ImageFilter.MedianFilter(3))) > FUNDUS_THRESHOLD
    rows, cols = _disk_span(disk.sum(axis=1)), _disk_span(disk.sum(axis=0))
    if rows is None or cols is None:
        side = max(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        return left, top, left + side, top + side
    # mask pixel i covers [i * factor, (i + 1) * factor) of the photo; the last one may be partial
    x0, x1 = cols[0] * factor, min(width, cols[1] * factor)
    y0, y1 = rows[0] * factor, min(height, rows[1] * factor)
    diameter = max(x1 - x0, y1 - y0)
    left = round(_disk_centre(x0, x1, width, diameter, 2 * factor) - diameter / 2)
    top = round(_disk_centre(y0, y1, height, diameter, 2 * factor) - diameter / 2)
    return left, top, left + diameter, top + diameter


def _fundus_square(img: Image.Image) -> Image.Image:
    """Crop to the square around the retina disk; what lies outside the photo becomes black."""
    return img.crop(fundus_box(img))  # PIL fills a box beyond the image with zeros


def load_image(path: Path, prep: Preprocess) -> np.ndarray:
    """Decode one file and apply the pixel part of ``prep``: RGB, crop, resize -> HxWx3 uint8.

    The one decoding path: the cache and the uncached dataset both call it.
    """
    size = prep.image_size
    img = open_rgb(path, draft_side=math.ceil(2 * size / max(prep.crop, 0.1)))
    box = None
    if prep.mode == "fundus":
        img = _fundus_square(img)
    elif prep.crop < 1.0:
        box = _centre_box(img.width, img.height, prep.crop)
    elif img.width != img.height:
        box = _centre_box(img.width, img.height, 1.0)
    # BICUBIC in PIL widens its filter when shrinking, so the resize is antialiased
    img = img.resize((size, size), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0)
    return np.array(img, dtype=np.uint8)


def measure_crop(paths: Sequence[Path], sample: int = CROP_SAMPLE, threshold: int = CELL_THRESHOLD,
                 margin: float = CROP_MARGIN) -> float:
    """Smallest centred square (fraction of the shorter side) that keeps every sampled cell whole."""
    chosen = sorted({round(i) for i in np.linspace(0, len(paths) - 1, min(sample, len(paths)))})
    needed = 0.0
    for i in chosen:
        pixels = np.asarray(open_rgb(paths[i]))
        height, width = pixels.shape[:2]
        cell = pixels.max(axis=2) > threshold
        rows, cols = np.flatnonzero(cell.any(axis=1)), np.flatnonzero(cell.any(axis=0))
        if not len(rows):
            continue  # an all-black image constrains nothing
        # pixel i covers [i, i + 1); the square is centred on (width / 2, height / 2)
        half = max(width / 2 - cols[0], cols[-1] + 1 - width / 2, height / 2 - rows[0], rows[-1] + 1 - height / 2)
        needed = max(needed, 2 * half / min(width, height))
    if needed == 0.0:
        return 1.0
    return min(1.0, math.ceil((needed + margin) * 1000) / 1000)
