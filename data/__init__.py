"""The data side: from files on disk to batches on the device.

    layouts.open_data(root)            -> DataSource with Splits (file lists, labels, Kaggle ids)
    statistics.fit_preprocess(train)   -> Preprocess (crop measured on the data, mean/std of train)
    cache.ImageDataset(split, prep)    -> uint8 3xHxW tensors, decoded+cropped+resized once (cache)
    loader.make_loader(dataset, ...)   -> batches (uint8 Nx3xHxW, int64 N) on the CPU
    augment.BatchTransform(prep, ...)  -> on the device: augmentation (train) + normalisation -> float
    scan.scan(paths) + audit.audit(...) -> audit.py's findings (leaks, copies, label conflicts, unreadable)

One module per concern: ``sources`` (Split, DataSource, CSV reading), one module per layout
family (``cells``: lab + Kaggle C-NMC; ``retina``; ``generic``: CSV and folders), ``preprocess``
(decoding, cell crop, fundus disk), ``statistics``, ``cache``, ``loader`` (sampling, class
weights), ``augment``. Import the public names from here.
"""
from __future__ import annotations

import importlib
from typing import Any

# name -> module. Loaded on first use, so that a script's --help does not wait for torch.
_EXPORTS = {
    "audit": ("audit_training",),
    "augment": ("BatchTransform", "COLOUR_JITTER", "Jitter", "default_augment", "sampling_grid"),
    "cache": ("ImageDataset", "build_cache"),
    "cells": ("LEUKEMIA_CLASSES",),
    "choices": ("AUGMENT_POLICIES", "LAYOUTS", "SPLIT_METHODS"),
    "layouts": ("open_data",),
    "loader": ("BatchLoader", "CLASS_WEIGHTINGS", "Sampling", "ShardedBatchSampler", "class_weights", "make_loader"),
    "preprocess": ("IMAGENET_MEAN", "IMAGENET_STD", "PREPROCESS_MODES", "Preprocess", "fundus_box", "load_image"),
    "retina": ("RETINOPATHY_CLASSES",),
    "sources": ("IMAGE_EXTENSIONS", "LAYOUT_NEEDS", "UNLABELLED", "DataError", "DataSource", "Split"),
    "statistics": ("fit_preprocess", "pixel_stats"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"data.{_MODULE_OF[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
