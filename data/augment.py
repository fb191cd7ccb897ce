"""Augmentation and normalisation on the device, for a whole uint8 batch at once."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from common.choices import AUGMENT_POLICIES
from data.preprocess import Preprocess

# AUGMENT_POLICIES, what may change an image without changing its class: "rotate" (no "up": cells,
# fundus photos) turns by any angle and flips; "upright" (chest X-rays, text, handwriting) only tilts by
# UPRIGHT_DEGREES; "none" only normalises.
UPRIGHT_DEGREES = 10.0
ROTATE_LAYOUTS = ("lab", "kaggle", "retina-lab", "retina-kaggle")  # cells and fundus photos
COLOUR_JITTER = {"center": (0.2, 0.2, 0.2, 0.04),  # BatchTransform's brightness, contrast, saturation, hue
                 "fundus": (0.1, 0.1, 0.1, 0.02)}  # mild: lesion colour (red bleeds, yellow exudates) is the signal


def default_augment(layout: str) -> str:
    """The policy a layout gets unless --augment says otherwise: rotate for cells and fundus, else upright."""
    return "rotate" if layout in ROTATE_LAYOUTS else "upright"


def sampling_grid(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``F.affine_grid(theta, (N, C, height, width), align_corners=False)``, built separably.

    Same values; on the CPU ~20x faster than affine_grid's batched matmul over every pixel.
    """
    n = theta.shape[0]
    xs = (torch.arange(width, device=theta.device, dtype=theta.dtype) * 2 + 1) / width - 1  # pixel centres
    ys = (torch.arange(height, device=theta.device, dtype=theta.dtype) * 2 + 1) / height - 1
    t = theta.view(n, 2, 3, 1, 1)
    grid = torch.empty(n, height, width, 2, device=theta.device, dtype=theta.dtype)
    for axis in range(2):
        torch.add(t[:, axis, 0] * xs.view(1, 1, width), t[:, axis, 1] * ys.view(1, height, 1) + t[:, axis, 2],
                  out=grid[..., axis])
    return grid


@dataclass(frozen=True)
class Jitter:
    """How strong the random changes are: a scale range, a shift (share of the side), and the colour
    strengths (brightness, contrast, saturation, hue; None: COLOUR_JITTER for the preprocessing mode)."""

    scale: tuple[float, float] = (0.9, 1.1)
    translate: float = 0.05
    colour: tuple[float, float, float, float] | None = None


# RGB -> YIQ; hue is a rotation of the (I, Q) plane and saturation scales it
_RGB_TO_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


class BatchTransform(torch.nn.Module):
    """uint8 batch on the device -> normalised float batch; random per-sample augmentation if ``train``.

    Training draws, per sample, from the global torch RNG: with ``policy`` "rotate", flips and a
    rotation by any angle; with "upright", a rotation within +-UPRIGHT_DEGREES and no flips; then a
    scale and a shift (one affine warp, zeros = black outside), then brightness, contrast,
    saturation and hue (one 3x3 colour matrix plus an offset). "none" only normalises. Without
    host syncs. ``jitter`` sets the strengths; by default the colour ones come from COLOUR_JITTER
    for ``prep.mode``: milder for fundus photos.
    """

    def __init__(self, prep: Preprocess, train: bool, policy: str = "rotate", jitter: Jitter = Jitter()) -> None:
        super().__init__()
        if policy not in AUGMENT_POLICIES:
            raise ValueError(f"unknown augmentation policy {policy!r}; choose one of {', '.join(AUGMENT_POLICIES)}")
        self.policy = policy
        self.augment = train and policy != "none"
        self.scale, self.translate = jitter.scale, jitter.translate
        self.brightness, self.contrast, self.saturation, self.hue = (
            jitter.colour or COLOUR_JITTER.get(prep.mode, COLOUR_JITTER["center"]))
        mean = torch.tensor(prep.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(prep.std, dtype=torch.float32).view(1, 3, 1, 1)
        yiq = torch.tensor(_RGB_TO_YIQ, dtype=torch.float64)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        self.register_buffer("yiq", yiq.float(), persistent=False)
        self.register_buffer("yiq_inverse", torch.linalg.inv(yiq).float(), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # ops write into buffers they own where they can: fresh CPU memory costs a page fault per 4 KiB
        x = images.to(torch.float32, memory_format=torch.contiguous_format, copy=True)  # N x 3 x H x W, 0..255
        if not self.augment:
            return torch.addcmul(-self.mean / self.std, x, 1.0 / (255.0 * self.std), out=x)
        n, _, height, width = x.shape
        grid = sampling_grid(self._random_warps(n, x.device), height, width)
        warped = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        matrix, offset = self._random_colours(warped)
        # normalisation folded into the colour transform; the clamp to [0, 1] becomes per-channel bounds
        torch.baddbmm((offset - self.mean.view(1, 3, 1)) / self.std.view(1, 3, 1),
                      matrix / (255.0 * self.std.view(1, 3, 1)), warped.view(n, 3, height * width),
                      out=x.view(n, 3, height * width))
        return x.clamp_(-self.mean / self.std, (1 - self.mean) / self.std)

    def _random_warps(self, n: int, device: torch.device) -> torch.Tensor:
        """N x 2 x 3 affine matrices (output -> input coordinates): flips, rotation, scale, shift."""
        # Cells and fundus photos have no "up": any angle is valid (both are standard for DR). A
        # vertical flip is a horizontal one plus a 180 degree turn, so with uniform angles the second
        # flip adds nothing, and harms nothing either; it is kept so that existing seeds reproduce.
        # "upright" draws the same numbers (one code path) and maps them to a small tilt, no flips.
        angle = torch.rand(n, device=device) * (2 * math.pi)
        flips = torch.randint(0, 2, (n, 2), device=device).float() * 2 - 1
        if self.policy == "upright":
            angle = (angle / math.pi - 1) * math.radians(UPRIGHT_DEGREES)
            flips = torch.ones_like(flips)
        scale = torch.empty(n, device=device).uniform_(*self.scale)
        shift = (torch.rand(n, 2, 1, device=device) * 2 - 1) * (2 * self.translate)  # the grid spans 2 units
        cos, sin = angle.cos(), angle.sin()
        rotation = torch.stack([cos, -sin, sin, cos], dim=1).view(n, 2, 2)
        linear = rotation * (flips / scale.unsqueeze(1)).unsqueeze(1)  # rotation @ diag(flips / scale)
        return torch.cat([linear, shift], dim=2)

    def _random_colours(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample 3x3 matrix and N x 3 x 1 offset (in 0..1 units) for x in 0..255."""
        n = x.shape[0]
        uniform = torch.rand(n, 4, device=x.device) * 2 - 1
        brightness = 1 + self.brightness * uniform[:, 0]
        contrast = 1 + self.contrast * uniform[:, 1]
        saturation = 1 + self.saturation * uniform[:, 2]
        hue = self.hue * 2 * math.pi * uniform[:, 3]
        cos, sin = saturation * hue.cos(), saturation * hue.sin()
        one, zero = torch.ones_like(hue), torch.zeros_like(hue)
        chroma = torch.stack([one, zero, zero, zero, cos, -sin, zero, sin, cos], dim=1).view(n, 3, 3)
        colour = brightness.view(n, 1, 1) * (self.yiq_inverse @ chroma @ self.yiq)
        # contrast blends towards the image's mean grey, measured after the warp like torchvision
        grey = torch.einsum("c,ncd,nd->n", self.yiq[0], colour, x.mean(dim=(2, 3))).view(n, 1, 1) / 255.0
        return contrast.view(n, 1, 1) * colour, (1 - contrast.view(n, 1, 1)) * grey.expand(n, 3, 1)
