"""Preprocessing fitted to the training split: the measured crop and the per-channel mean/std."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from data.cache import CACHE_VERSION, ImageDataset, digest, write_atomically
from data.preprocess import (
    CELL_THRESHOLD,
    CROP_BORDER_PX,
    CROP_MARGIN,
    CROP_SAMPLE,
    PREPROCESS_MODES,
    Preprocess,
    measure_crop,
)
from data.sources import DataError, Split


def fit_preprocess(train: Split, image_size: int, mode: str = "center",
                   imagenet_stats: bool = False, cache_dir: Path | None = None) -> Preprocess:
    """Measure the crop on the training images and their mean/std (cached in ``cache_dir``).

    mean/std are per channel over every preprocessed training pixel in [0, 1]; with
    ``cache_dir`` they are computed from (and build) the training split's pixel cache, and the
    result is stored as JSON there so that the next run with the same files reuses it.
    ``imagenet_stats`` keeps IMAGENET_MEAN/STD (for pretrained weights).
    """
    if mode not in PREPROCESS_MODES:
        raise DataError(f"unknown preprocessing mode {mode!r}; choices: {', '.join(PREPROCESS_MODES)}")
    record = None
    if cache_dir is not None:
        settings = {"version": CACHE_VERSION, "files": train.fingerprint(), "image_size": image_size,
                    "mode": mode, "imagenet_stats": imagenet_stats, "sample": CROP_SAMPLE,
                    "threshold": CELL_THRESHOLD, "margin": CROP_MARGIN, "border": CROP_BORDER_PX}
        record = Path(cache_dir) / f"preprocess-{train.name}-{digest(settings)}.json"
        if record.is_file():
            return Preprocess.from_dict(json.loads(record.read_text()))
    # the resize filter reaches ~2 output pixels inwards: keep 3 black ones round every cell
    margin = max(CROP_MARGIN, 2 * CROP_BORDER_PX / image_size)
    crop = measure_crop(train.paths, margin=margin) if mode == "center" else 1.0
    prep = Preprocess(image_size=image_size, crop=crop, mode=mode)
    if not imagenet_stats:
        mean, std = pixel_stats(ImageDataset(train, prep, cache_dir))
        prep = replace(prep, mean=mean, std=std)
    if record is not None:
        write_atomically(record, json.dumps(prep.to_dict(), indent=1).encode())
    return prep


def pixel_stats(dataset: "ImageDataset", chunk: int = 64) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of every pixel of ``dataset`` in [0, 1] (from exact histograms)."""
    counts = torch.zeros(3, 256, dtype=torch.int64)
    for start in range(0, len(dataset), chunk):
        images, _ = dataset.__getitems__(range(start, min(start + chunk, len(dataset))))
        for channel in range(3):
            counts[channel] += torch.bincount(images[:, channel].flatten(), minlength=256)
    values = torch.arange(256, dtype=torch.float64) / 255
    total = counts.sum(dim=1).double()
    mean = (counts * values).sum(dim=1) / total
    var = (counts * values ** 2).sum(dim=1) / total - mean ** 2
    std = var.clamp(min=0).sqrt().clamp(min=1e-3)  # an all-black set must not divide by zero
    return tuple(mean.tolist()), tuple(std.tolist())
