"""The figure of demo images in the README (docs/demo_samples.png): what the generator draws.

    python demo_data.py --samples-figure docs/demo_samples.png
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from data.demo.cells import render_cell, sample_cell  # noqa: E402
from data.demo.fundus import render_fundus, sample_fundus  # noqa: E402

COLUMNS = 5
ROWS = (("normal cell (class 0)", "leukemia", 0), ("blast (class 1)", "leukemia", 1), ("retina", "retinopathy", None))


def sample_images(task: str, label: int | None, seed: int, size: int) -> list[tuple[np.ndarray, str]]:
    """``COLUMNS`` drawn images of one row with their captions: cells of ``label``, or retina grades 0-4."""
    images = []
    for column in range(COLUMNS):
        rng = np.random.default_rng([seed, column, 0 if label is None else label + 1])
        if task == "leukemia":
            images.append((render_cell(sample_cell(rng, label), size, rng), f"{'blast' if label else 'normal'}"))
        else:
            images.append((render_fundus(sample_fundus(rng, column, column % 2 == 1), size, rng), f"grade {column}"))
    return images


def save_samples_figure(path: Path, seed: int = 0, size: int = 256) -> None:
    """Three rows (normal cells, blasts, retina grades 0-4), each image captioned in dark text on white,
    sized to stay readable at the README's display width (about 900 px)."""
    fig, axes = plt.subplots(len(ROWS), COLUMNS, figsize=(10, 6.9), layout="constrained", facecolor="white")
    for row, (title, task, label) in zip(axes, ROWS):
        for ax, (pixels, caption) in zip(row, sample_images(task, label, seed, size)):
            ax.imshow(pixels)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(caption, fontsize=14, color="black")
        row[0].set_ylabel(title, fontsize=14, color="black")
    fig.savefig(path, dpi=100, facecolor="white")
    plt.close(fig)
