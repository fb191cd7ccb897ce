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
weights), ``augment``, ``saved_splits`` (the train/valid lists a run used, read back); audit.py's
``scan``, ``phash``, ``audit``, ``audit_report``. Import the
public names from here; ``common.choices`` holds the names --help shows.
"""
from __future__ import annotations

# Plain imports: importing data loads torch. What --help needs (LAYOUTS, SPLIT_METHODS, ...) lives in
# common.choices, which imports nothing, because this file runs before any module of data.
from common.choices import AUGMENT_POLICIES, LAYOUTS, SPLIT_METHODS
from data.audit import audit_training
from data.augment import COLOUR_JITTER, BatchTransform, Jitter, default_augment, sampling_grid
from data.cache import ImageDataset, build_cache
from data.cells import LEUKEMIA_CLASSES
from data.layouts import open_data
from data.loader import CLASS_WEIGHTINGS, BatchLoader, Sampling, ShardedBatchSampler, class_weights, make_loader
from data.preprocess import IMAGENET_MEAN, IMAGENET_STD, PREPROCESS_MODES, Preprocess, fundus_box, load_image
from data.retina import RETINOPATHY_CLASSES
from data.saved_splits import ACCEPT_FLAG, SPLITS_FILE, restore_splits, splits_csv, splits_for_resume
from data.sources import IMAGE_EXTENSIONS, LAYOUT_NEEDS, UNLABELLED, DataError, DataSource, Split
from data.statistics import fit_preprocess, pixel_stats

__all__ = ["ACCEPT_FLAG", "AUGMENT_POLICIES", "BatchLoader", "BatchTransform", "CLASS_WEIGHTINGS", "COLOUR_JITTER",
           "DataError", "DataSource", "IMAGENET_MEAN", "IMAGENET_STD", "IMAGE_EXTENSIONS", "ImageDataset", "Jitter",
           "LAYOUTS", "LAYOUT_NEEDS", "LEUKEMIA_CLASSES", "PREPROCESS_MODES", "Preprocess", "RETINOPATHY_CLASSES",
           "SPLITS_FILE", "SPLIT_METHODS", "Sampling", "ShardedBatchSampler", "Split", "UNLABELLED", "build_cache",
           "class_weights", "default_augment", "fit_preprocess", "fundus_box", "load_image", "make_loader",
           "open_data", "pixel_stats", "restore_splits", "sampling_grid", "splits_csv", "splits_for_resume",
           "audit_training"]
