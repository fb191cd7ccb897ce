"""Drawn retina photos (Kaggle DR look): fundus disk, optic disc, vessels and lesions growing with the grade."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from data.demo.cells import smooth_noise, soft_inside, to_uint8

# ---------------------------------------------------------------------------------------------
# Retina photos (Kaggle DR look: orange-red fundus disk on black, optic disc, vessels, lesions).


@dataclass(frozen=True)
class Fundus:
    """Random parameters of one fundus photo; lengths are fractions of the image side."""

    grade: int
    right_eye: bool
    center: tuple[float, float]
    radius: float
    colour: tuple[float, float, float]
    brightness: float
    gradient: tuple[float, float]
    vignetting: float
    disc: tuple[float, float, float]  # x, y offset from the centre, radius
    macula: tuple[float, float]
    microaneurysms: int
    haemorrhages: int
    exudate_clusters: int
    cotton_wool: int
    neovascular_tufts: int
    large_haemorrhages: int
    blur: float


def sample_fundus(rng: np.random.Generator, grade: int, right_eye: bool) -> Fundus:
    """Draw the parameters of a fundus photo of DR ``grade`` 0-4; lesions grow with the grade."""
    u, side = rng.uniform, 1.0 if right_eye else -1.0
    radius = float(u(0.41, 0.48))
    disc_x = side * float(u(0.26, 0.34)) * radius / 0.45

    def count(low: int, high: int, from_grade: int) -> int:
        return int(rng.integers(low, high + 1)) if grade >= from_grade else 0

    return Fundus(
        grade=grade,
        right_eye=right_eye,
        center=(float(0.5 + rng.normal(0, 0.015)), float(0.5 + rng.normal(0, 0.015))),
        radius=radius,
        colour=(float(u(0.78, 0.95)), float(u(0.3, 0.45)), float(u(0.1, 0.2))),
        brightness=float(u(0.7, 1.1)),
        gradient=(float(rng.normal(0, 0.2)), float(rng.normal(0, 0.2))),
        vignetting=float(u(0.35, 0.65)),
        disc=(disc_x, float(rng.normal(0, 0.02)), float(u(0.05, 0.065))),
        macula=(-disc_x * float(u(0.05, 0.2)), float(rng.normal(0, 0.015))),
        microaneurysms=count(3, 10, 1) + count(6, 14, 2),
        haemorrhages=count(3, 8, 2) + count(6, 14, 3),
        exudate_clusters=count(2, 5, 3),
        cotton_wool=count(1, 4, 3),
        neovascular_tufts=count(1, 3, 4),
        large_haemorrhages=count(1, 3, 4),
        blur=float(u(0.0008, 0.002)),
    )


def vessel_tree(rng: np.random.Generator, start: tuple[float, float], angle: float, turn: float,
                length: float, width: float, depth: int) -> list[tuple[list[tuple[float, float]], float]]:
    """A random-walk vessel with branches: a list of (polyline, width) in canvas pixels."""
    steps = min(max(int(length / (2.5 * max(width, 1.0))), 6), 40)
    step = length / steps
    points, (x, y) = [start], start
    branches: list[tuple[list[tuple[float, float]], float]] = []
    for i in range(steps):
        angle += turn + rng.normal(0, 0.08)
        x, y = x + step * math.cos(angle), y + step * math.sin(angle)
        points.append((x, y))
        if depth > 0 and 0.15 < i / steps < 0.85 and rng.uniform() < 2.2 / steps:
            fork = angle + rng.choice([-1, 1]) * rng.uniform(0.5, 1.0)
            branches += vessel_tree(rng, (x, y), fork, rng.normal(0, 0.03), length * rng.uniform(0.3, 0.55),
                                    width * 0.65, depth - 1)
    return [(points, width)] + branches


def draw_paths(canvas: Image.Image, paths: Iterable[tuple[list[tuple[float, float]], float]],
               taper: float = 0.5) -> None:
    """Draw polylines that thin towards their ends by ``taper``, with round joints."""
    draw = ImageDraw.Draw(canvas)
    for points, width in paths:
        for i in range(len(points) - 1):
            w = max(width * (1.0 - taper * i / len(points)), 1.0)
            draw.line([points[i], points[i + 1]], fill=255, width=int(round(w)))
            (px, py), half = points[i + 1], w / 2
            draw.ellipse([px - half, py - half, px + half, py + half], fill=255)


def point_in_disk(rng: np.random.Generator, cx: float, cy: float, radius: float) -> tuple[float, float]:
    """A uniformly random point in the disk of ``radius`` around (cx, cy)."""
    angle, distance = rng.uniform(0, 2 * math.pi), radius * math.sqrt(rng.uniform())
    return cx + distance * math.cos(angle), cy + distance * math.sin(angle)


def blobs(draw: ImageDraw.ImageDraw, rng: np.random.Generator, x: float, y: float, radius: float,
          parts: int) -> None:
    """An irregular blob: a few overlapping ellipses around (x, y)."""
    for _ in range(parts):
        cx, cy = x + rng.normal(0, 0.35 * radius), y + rng.normal(0, 0.35 * radius)
        rx, ry = radius * rng.uniform(0.5, 1.0), radius * rng.uniform(0.5, 1.0)
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)


def mask_array(canvas: Image.Image, blur_px: float, size: int) -> np.ndarray:
    """A drawn mask, box-downsampled to ``size`` and softened by ``blur_px`` canvas pixels: size x size x 1."""
    if canvas.getbbox() is None:  # nothing drawn (a healthy eye has no lesions)
        return np.zeros((size, size, 1), np.float32)
    small = canvas.resize((size, size), Image.Resampling.BOX)
    small = small.filter(ImageFilter.GaussianBlur(blur_px * size / canvas.width))
    return np.asarray(small, dtype=np.float32)[..., None] / 255.0


@dataclass(frozen=True)
class FundusLayout:
    """Where the eye lies on the drawing canvas, in canvas pixels (the canvas is twice the image)."""

    scale: int  # canvas side
    cx: float
    cy: float
    radius: float
    disc_x: float
    disc_y: float
    disc_r: float
    macula_x: float
    macula_y: float

    @classmethod
    def of(cls, eye: Fundus, scale: int) -> "FundusLayout":
        cx, cy = eye.center[0] * scale, eye.center[1] * scale
        return cls(scale=scale, cx=cx, cy=cy, radius=eye.radius * scale,
                   disc_x=cx + eye.disc[0] * scale, disc_y=cy + eye.disc[1] * scale, disc_r=eye.disc[2] * scale,
                   macula_x=cx + eye.macula[0] * scale, macula_y=cy + eye.macula[1] * scale)


# How each drawn lesion mask is blended in: (blur as a fraction of the canvas, opacity, RGB colour).
LESION_LOOKS = {
    "new_vessels": (0.001, 0.6, (0.5, 0.08, 0.06)),
    "red": (0.002, 0.85, (0.38, 0.06, 0.04)),  # microaneurysms, haemorrhages
    "exudates": (0.0015, 0.9, (1.0, 0.88, 0.45)),
    "cotton_wool": (0.012, 0.55, (0.95, 0.82, 0.7)),
}


def render_fundus(eye: Fundus, size: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``eye`` as a ``size`` x ``size`` x 3 uint8 image, black outside the fundus disk.

    Vessels and lesions are drawn on a canvas twice the size and box-downsampled (anti-aliasing).
    """
    at = FundusLayout.of(eye, 2 * size)
    centres = 2.0 * (np.arange(size, dtype=np.float32) + 0.5)  # output pixel centres on the canvas
    x, y = centres[None, :] - at.cx, centres[:, None] - at.cy
    image = fundus_background(eye, at, x, y, rng)
    veins, arteries = draw_vessels(rng, at, eye.right_eye)
    # Vessels absorb green and blue more than red: they look dark red on the orange background.
    image = image * (1 - mask_array(veins, 0.6, size) * np.array((0.45, 0.75, 0.6), np.float32))
    image = image * (1 - mask_array(arteries, 0.6, size) * np.array((0.25, 0.55, 0.4), np.float32))
    lesions = draw_lesions(rng, eye, at)
    for name, (blur, opacity, colour) in LESION_LOOKS.items():
        mask = opacity * mask_array(lesions[name], blur * at.scale, size)
        image = image * (1 - mask) + mask * np.array(colour, np.float32) * eye.brightness

    # The camera: soft focus, sensor noise, and the round field stop (exactly black outside).
    photo = Image.fromarray(to_uint8(image), "RGB").filter(ImageFilter.GaussianBlur(eye.blur * size))
    photo = np.asarray(photo, dtype=np.float32) / 255.0 + rng.normal(0, 0.01, image.shape).astype(np.float32)
    field = soft_inside((at.radius - np.hypot(x, y)) / 2.0)[..., None]
    return to_uint8(photo * field)


def fundus_background(eye: Fundus, at: FundusLayout, x: np.ndarray, y: np.ndarray,
                      rng: np.random.Generator) -> np.ndarray:
    """Orange-red fundus, darker to the rim, uneven light, choroid texture, dark macula, yellow disc."""
    size = x.shape[1]
    shade = eye.brightness * (1.0 - eye.vignetting * (np.hypot(x, y) / at.radius) ** 3)
    shade = shade * (1.0 + (eye.gradient[0] * x + eye.gradient[1] * y) / at.scale)
    shade = shade * (1.0 + 0.05 * smooth_noise(rng, size, 0.02 * size))
    to_macula = np.hypot(x + at.cx - at.macula_x, y + at.cy - at.macula_y)
    shade = shade * (1.0 - 0.35 * np.exp(-0.5 * (to_macula / (0.06 * at.scale)) ** 2))
    image = shade[..., None] * np.array(eye.colour, np.float32)
    to_disc = np.hypot(x + at.cx - at.disc_x, y + at.cy - at.disc_y)
    glow = np.exp(-0.5 * (to_disc / (1.4 * at.disc_r)) ** 2)[..., None]
    disc = np.clip((at.disc_r - to_disc) / (0.15 * at.disc_r), 0, 1)[..., None]
    image = image + 0.25 * glow * np.array((0.9, 0.6, 0.2), np.float32)
    return image * (1 - disc) + disc * np.array((1.0, 0.86, 0.55), np.float32) * (0.85 + 0.15 * eye.brightness)


def draw_vessels(rng: np.random.Generator, at: FundusLayout, right_eye: bool) -> tuple[Image.Image, Image.Image]:
    """Vein and artery masks: temporal arcades leave the disc and bend round the macula, nasal ones fan out."""
    side = 1.0 if right_eye else -1.0  # the disc sits on the right in a right eye
    veins, arteries = Image.new("L", (at.scale, at.scale)), Image.new("L", (at.scale, at.scale))
    for vertical in (-1.0, 1.0):
        for canvas, width, spread in ((veins, 0.011, 0.0), (arteries, 0.008, 0.15)):
            temporal = math.atan2(vertical * 0.95, -side * (0.3 + spread))
            bend = vertical * side * 0.07
            draw_paths(canvas, vessel_tree(rng, (at.disc_x, at.disc_y), temporal, bend, 1.15 * at.radius,
                                           width * at.scale, 3))
            nasal = math.atan2(vertical * (0.8 + spread), side * 0.6)
            draw_paths(canvas, vessel_tree(rng, (at.disc_x, at.disc_y), nasal, rng.normal(0, 0.02),
                                           0.7 * at.radius, 0.8 * width * at.scale, 2))
    return veins, arteries


def draw_lesions(rng: np.random.Generator, eye: Fundus, at: FundusLayout) -> dict[str, Image.Image]:
    """Lesion masks named as in LESION_LOOKS; how many of each the eye's grade decided."""
    masks = {name: Image.new("L", (at.scale, at.scale)) for name in LESION_LOOKS}
    red, exudates, wool = (ImageDraw.Draw(masks[name]) for name in ("red", "exudates", "cotton_wool"))
    scale = at.scale
    for _ in range(eye.microaneurysms):
        px, py = point_in_disk(rng, at.cx, at.cy, 0.75 * at.radius)
        rr = max(rng.uniform(0.004, 0.007) * scale, 1.2)
        red.ellipse([px - rr, py - rr, px + rr, py + rr], fill=255)
    for _ in range(eye.haemorrhages):
        px, py = point_in_disk(rng, at.cx, at.cy, 0.8 * at.radius)
        blobs(red, rng, px, py, rng.uniform(0.01, 0.025) * scale, int(rng.integers(2, 5)))
    for _ in range(eye.exudate_clusters):  # hard exudates gather in rings near the macula
        ox, oy = at.macula_x + rng.normal(0, 0.12 * at.radius), at.macula_y + rng.normal(0, 0.12 * at.radius)
        ring = rng.uniform(0.02, 0.07) * scale
        for _ in range(int(rng.integers(6, 16))):
            a, stretch = rng.uniform(0, 2 * math.pi), rng.uniform(0.7, 1.2)
            blobs(exudates, rng, ox + ring * stretch * math.cos(a), oy + ring * stretch * math.sin(a),
                  max(rng.uniform(0.003, 0.009) * scale, 1.0), 2)
    for _ in range(eye.cotton_wool):
        px, py = point_in_disk(rng, at.cx, at.cy, 0.6 * at.radius)
        blobs(wool, rng, px, py, rng.uniform(0.015, 0.03) * scale, 3)
    for _ in range(eye.neovascular_tufts):  # tangles of fine new vessels, on the disc or elsewhere
        ox, oy = (at.disc_x, at.disc_y) if rng.uniform() < 0.5 else point_in_disk(rng, at.cx, at.cy, 0.6 * at.radius)
        loops = [vessel_tree(rng, (ox + rng.normal(0, 0.02 * scale), oy + rng.normal(0, 0.02 * scale)),
                             rng.uniform(0, 2 * math.pi), rng.normal(0, 0.5), 0.05 * scale, 0.0035 * scale, 1)
                 for _ in range(int(rng.integers(8, 16)))]
        draw_paths(masks["new_vessels"], [path for loop in loops for path in loop], taper=0.2)
    for _ in range(eye.large_haemorrhages):
        px, py = point_in_disk(rng, at.cx, at.cy, 0.6 * at.radius)
        rx, ry = rng.uniform(0.04, 0.08) * scale, rng.uniform(0.03, 0.06) * scale
        if rng.uniform() < 0.5:  # preretinal bleed: boat-shaped, flat on top
            red.chord([px - rx, py - ry, px + rx, py + ry], start=0, end=180, fill=255)
        else:
            blobs(red, rng, px, py, rx, 4)
    return masks
