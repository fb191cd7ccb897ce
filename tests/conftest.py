"""Shared fixtures: tiny data sets written by the tests themselves (nothing is downloaded)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def draw_cell(rng: np.random.Generator, size: int, label: int) -> Image.Image:
    """A disk on black: blasts (1) large and purple, normal cells (0) small and dark."""
    yy, xx = np.mgrid[:size, :size]
    c = size / 2 + rng.uniform(-2, 2, size=2)
    r = size * (0.32 if label else 0.18) * rng.uniform(0.9, 1.1)
    inside = (yy - c[0]) ** 2 + (xx - c[1]) ** 2 < r ** 2
    colour = np.array([150, 90, 190] if label else [90, 60, 120]) * rng.uniform(0.85, 1.15)
    img = np.zeros((size, size, 3), np.float64)
    img[inside] = colour
    img += rng.normal(0, 6, img.shape) * inside[..., None]
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def write_lab_dataset(root: Path, n_train: int = 32, n_valid: int = 12, n_test: int = 8, size: int = 40,
                      seed: int = 0) -> Path:
    """The lab layout: train.csv/valid.csv (Path,label) and resnet_*_test.csv (Path) beside new_dataset/."""
    rng = np.random.default_rng(seed)
    data = root / "new_dataset"
    for split, n in (("train", n_train), ("valid", n_valid), ("test", n_test)):
        (data / split).mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(n):
            label = int(i % 3 != 0)  # about two thirds blasts, like C-NMC
            draw_cell(rng, size, label).save(data / split / f"{i}.bmp")
            rows.append((f"./new_dataset/{split}/{i}.bmp", label))
        if split == "test":
            order = rng.permutation(n)  # a test list not in file order: the CSV order must be kept
            lines = ["Path"] + [rows[j][0] for j in order]
            for depth in (18, 50, 152):
                (data / f"resnet_{depth}_test.csv").write_text("\n".join(lines) + "\n")
        else:
            (data / f"{split}.csv").write_text("Path,label\n" + "".join(f"{p},{l}\n" for p, l in rows))
    return data


@pytest.fixture(scope="session")
def lab_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny lab-layout data set (40 px BMPs); returns the new_dataset/ folder."""
    return write_lab_dataset(tmp_path_factory.mktemp("lab"))
