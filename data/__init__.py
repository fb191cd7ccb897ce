"""The data side: from files on disk to batches on the device.

    layouts.open_data(root)            -> DataSource with Splits (file lists, labels, Kaggle ids)
    statistics.fit_preprocess(train)   -> Preprocess (crop measured on the data, mean/std of train)
    cache.ImageDataset(split, prep)    -> uint8 3xHxW tensors, decoded+cropped+resized once (cache)
    loader.make_loader(dataset, ...)   -> batches (uint8 Nx3xHxW, int64 N) on the CPU
    augment.BatchTransform(prep, ...)  -> on the device: augmentation (train) + normalisation -> float

One module per concern: ``sources`` (Split, DataSource, CSV reading), one module per layout
family (``cells``: lab + Kaggle C-NMC; ``retina``; ``generic``: CSV and folders), ``preprocess``
(decoding, cell crop, fundus disk), ``statistics``, ``cache``, ``loader`` (sampling, class
weights), ``augment``, ``saved_splits`` (the train/valid lists a run used, read back). Import the
public names from here.
"""
from __future__ import annotations

import importlib
from typing import Any

# name -> module. Loaded on first use, so that a script's --help does not wait for torch.
_EXPORTS = {
    "augment": ("BatchTransform", "COLOUR_JITTER", "Jitter", "default_augment", "sampling_grid"),
    "cache": ("ImageDataset", "build_cache"),
    "cells": ("LEUKEMIA_CLASSES",),
    "choices": ("AUGMENT_POLICIES", "LAYOUTS", "SPLIT_METHODS"),
    "layouts": ("open_data",),
    "loader": ("BatchLoader", "CLASS_WEIGHTINGS", "Sampling", "ShardedBatchSampler", "class_weights", "make_loader"),
    "preprocess": ("IMAGENET_MEAN", "IMAGENET_STD", "PREPROCESS_MODES", "Preprocess", "fundus_box", "load_image"),
    "retina": ("RETINOPATHY_CLASSES",),
    "saved_splits": ("ACCEPT_FLAG", "SPLITS_FILE", "restore_splits", "splits_csv", "splits_for_resume"),
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
