"""Drawn white blood cells (C-NMC look), and the drawing helpers the fundus photos share."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image, ImageFilter

# ---------------------------------------------------------------------------------------------
# Shared drawing helpers. Lengths are fractions of the image side unless named *_px.


def smooth_noise(rng: np.random.Generator, size: int, sigma_px: float) -> np.ndarray:
    """Gaussian-filtered white noise of unit standard deviation, ``size`` x ``size`` float32."""
    white = rng.standard_normal((size, size)).astype(np.float32)
    freq = np.fft.fftfreq(size).astype(np.float32)
    kernel = np.exp(-2.0 * (math.pi * sigma_px) ** 2 * (freq[:, None] ** 2 + freq[None, :] ** 2))
    field = np.fft.irfft2(np.fft.rfft2(white) * kernel[:, : size // 2 + 1], s=(size, size)).astype(np.float32)
    return field / (field.std() + 1e-8)


def soft_inside(signed_px: np.ndarray) -> np.ndarray:
    """Anti-aliased inside-mask from a signed distance in pixels (positive inside)."""
    return np.clip(signed_px + 0.5, 0.0, 1.0)


def polar_radius(theta: np.ndarray, radius: float, harmonics: Sequence[tuple[int, float, float]]) -> np.ndarray:
    """r(theta) = radius * (1 + sum a cos(k theta + phase)) for (k, a, phase) in ``harmonics``."""
    wobble = np.zeros_like(theta)
    for k, amplitude, phase in harmonics:
        wobble += amplitude * np.cos(k * theta + phase)
    return radius * (1.0 + wobble)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """[0, 1] floats to rounded, clipped uint8."""
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# White blood cells (C-NMC look: one segmented cell, purple nucleus, pale cytoplasm, black around).

# Optical density per unit stain: Giemsa-like purple nucleus and pale blue-lilac cytoplasm.
NUCLEUS_OD = (1.05, 1.45, 0.55)
CYTOPLASM_OD = (0.28, 0.40, 0.12)


@dataclass(frozen=True)
class Cell:
    """Random parameters of one cell; lengths are fractions of the image side."""

    label: int
    offset: tuple[float, float]
    radius: float
    aspect: float
    angle: float
    membrane: tuple[tuple[int, float, float], ...]
    nucleus_ratio: float  # nucleus radius / cell radius (the N:C ratio's square root)
    nucleus_shift: tuple[float, float]  # eccentricity as a fraction of the rim, and its direction
    nucleus_shape: tuple[tuple[int, float, float], ...]
    clefts: tuple[tuple[float, float, float], ...]  # (angle, depth, width) notches in the nucleus
    chromatin_density: float
    chromatin_contrast: float
    chromatin_grain: float  # clump size as a fraction of the nucleus radius
    rim_condensation: float  # extra density along the nuclear membrane
    nucleoli: tuple[tuple[float, float, float], ...]  # (distance, angle, radius) in nucleus radii
    cytoplasm_density: float
    stain_nucleus: tuple[float, float, float]
    stain_cytoplasm: tuple[float, float, float]
    illumination: tuple[float, float, float]
    gradient: tuple[float, float]
    blur: float
    noise: float


def sample_cell(rng: np.random.Generator, label: int) -> Cell:
    """Draw the parameters of a normal lymphocyte (0) or a lymphoblast (1)."""
    blast = label == 1
    u = rng.uniform
    radius = float(np.clip(rng.normal(0.265 if blast else 0.235, 0.035), 0.15, 0.36))
    harmonics = tuple((k, float(u(0.0, 0.025)), float(u(0, 2 * math.pi))) for k in (2, 3, 4, 5))
    if blast:
        shape = tuple((k, float(u(0.02, 0.075)), float(u(0, 2 * math.pi))) for k in (2, 3, 4, 5))
        n_clefts = int(rng.choice([0, 1, 1, 2, 2, 3]))
        clefts = tuple((float(u(0, 2 * math.pi)), float(u(0.12, 0.32)), float(u(0.12, 0.3)))
                       for _ in range(n_clefts))
        n_nucleoli = int(rng.choice([0, 1, 2, 2, 3, 3, 4], p=[0.06, 0.2, 0.22, 0.14, 0.16, 0.12, 0.10]))
        nucleoli = tuple((float(u(0.0, 0.55)), float(u(0, 2 * math.pi)), float(u(0.1, 0.17)))
                         for _ in range(n_nucleoli))
    else:
        shape = tuple((k, float(u(0.0, 0.03)), float(u(0, 2 * math.pi))) for k in (2, 3, 4))
        clefts = ((float(u(0, 2 * math.pi)), float(u(0.05, 0.15)), float(u(0.2, 0.4))),) if u() < 0.2 else ()
        nucleoli = ((float(u(0.0, 0.5)), float(u(0, 2 * math.pi)), float(u(0.06, 0.1))),) if u() < 0.12 else ()
    hue = rng.normal(0.0, 0.12, 3)  # per-channel stain variation, shared by nucleus and cytoplasm
    stain = float(u(0.75, 1.25))
    return Cell(
        label=label,
        offset=(float(rng.normal(0, 0.015)), float(rng.normal(0, 0.015))),
        radius=radius,
        aspect=float(u(1.0, 1.18)),
        angle=float(u(0, 2 * math.pi)),
        membrane=harmonics,
        nucleus_ratio=float(u(0.8, 0.92) if blast else u(0.7, 0.84)),
        nucleus_shift=(float(u(0.0, 0.9)), float(u(0, 2 * math.pi))),
        nucleus_shape=shape,
        clefts=clefts,
        chromatin_density=float(u(0.65, 0.85) if blast else u(0.9, 1.15)) * stain,
        chromatin_contrast=float(u(0.06, 0.14) if blast else u(0.25, 0.4)),
        chromatin_grain=float(u(0.03, 0.05) if blast else u(0.09, 0.14)),
        rim_condensation=float(u(0.0, 0.1) if blast else u(0.15, 0.35)),
        nucleoli=nucleoli,
        cytoplasm_density=float(u(0.7, 1.6)) * stain,
        stain_nucleus=tuple(float(c) for c in np.array(NUCLEUS_OD) * np.exp(hue + rng.normal(0, 0.05, 3))),
        stain_cytoplasm=tuple(float(c) for c in np.array(CYTOPLASM_OD) * np.exp(hue + rng.normal(0, 0.08, 3))),
        illumination=tuple(float(c) for c in u(0.82, 1.0) * np.exp(rng.normal(0, 0.04, 3))),
        gradient=(float(rng.normal(0, 0.15)), float(rng.normal(0, 0.15))),
        blur=float(u(0.002, 0.007)),
        noise=float(u(0.006, 0.018)),
    )


def render_cell(cell: Cell, size: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``cell`` as a ``size`` x ``size`` x 3 uint8 image, exactly black outside the cell."""
    grid = (np.arange(size, dtype=np.float32) + 0.5) - size / 2
    x = grid[None, :] - cell.offset[0] * size
    y = grid[:, None] - cell.offset[1] * size
    # The cell's own frame: rotated, then stretched along u (area kept) so the cell is a bit oval.
    cos, sin, stretch = math.cos(cell.angle), math.sin(cell.angle), math.sqrt(cell.aspect)
    u = (x * cos + y * sin) / stretch
    v = (-x * sin + y * cos) * stretch
    radius_px = cell.radius * size
    membrane = polar_radius(np.arctan2(v, u), radius_px, cell.membrane)
    inside_cell = soft_inside(membrane - np.hypot(u, v))

    nucleus_px = radius_px * cell.nucleus_ratio
    shift = cell.nucleus_shift[0] * (radius_px - nucleus_px)
    nu = u - shift * math.cos(cell.nucleus_shift[1])
    nv = v - shift * math.sin(cell.nucleus_shift[1])
    theta, r = np.arctan2(nv, nu), np.hypot(nu, nv)
    boundary = polar_radius(theta, nucleus_px, cell.nucleus_shape)
    for angle, depth, width in cell.clefts:
        gap = np.angle(np.exp(1j * (theta - angle)))  # wrapped to [-pi, pi]
        boundary = boundary - depth * nucleus_px * np.exp(-0.5 * (gap / width) ** 2)
    inside_nucleus = soft_inside(boundary - r) * inside_cell

    grain_px = max(cell.chromatin_grain * nucleus_px, 0.6)
    chromatin = 1.0 + cell.chromatin_contrast * np.tanh(1.5 * smooth_noise(rng, size, grain_px))
    edge = np.clip(1.0 - (boundary - r) / (0.18 * nucleus_px), 0.0, 1.0)  # 1 at the membrane
    density = cell.chromatin_density * (chromatin + cell.rim_condensation * edge ** 2)
    for distance, angle, radius in cell.nucleoli:
        d = np.hypot(nu - distance * nucleus_px * math.cos(angle), nv - distance * nucleus_px * math.sin(angle))
        body = np.clip(1.5 - 1.5 * d / (radius * nucleus_px), 0.0, 1.0)  # soft-edged, paler than chromatin
        ring = np.exp(-0.5 * ((d - radius * nucleus_px) / max(0.03 * nucleus_px, 0.5)) ** 2)
        density = density * (1.0 - 0.35 * body) + 0.15 * cell.chromatin_density * ring

    texture = 1.0 + 0.08 * smooth_noise(rng, size, max(0.05 * radius_px, 0.6))
    cytoplasm = cell.cytoplasm_density * texture * (inside_cell - inside_nucleus)
    optical_density = (inside_nucleus * density)[..., None] * np.array(cell.stain_nucleus, np.float32) \
        + cytoplasm[..., None] * np.array(cell.stain_cytoplasm, np.float32)
    light = 1.0 + cell.gradient[0] * x / size + cell.gradient[1] * y / size
    image = light[..., None] * np.array(cell.illumination, np.float32) * np.exp(-optical_density)

    # Optics first (blur, sensor noise), then the segmentation mask: the background stays exactly 0.
    image = np.asarray(Image.fromarray(to_uint8(image), "RGB").filter(
        ImageFilter.GaussianBlur(cell.blur * size)), dtype=np.float32) / 255.0
    image = image + rng.normal(0.0, cell.noise, image.shape).astype(np.float32)
    return to_uint8(image * (inside_cell >= 0.5)[..., None])
