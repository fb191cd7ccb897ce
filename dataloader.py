"""The lab's data interface: ``LeukemiaLoader`` and ``RetinopathyLoader``, custom Datasets by name.

    LeukemiaLoader("new_dataset", "train")[i]        -> (uint8 3xHxW tensor, label 0 normal / 1 blast)
    RetinopathyLoader("new_dataset_retina", "test")  -> (uint8 3xHxW tensor, grade 0-4)

Behind them sits the ``data`` package (layouts, preprocessing, the decode-once cache, sampling
and the on-device augmentation); the names the scripts use are re-exported here.
"""
from __future__ import annotations

from pathlib import Path

from data import (LAYOUT_NEEDS, LAYOUTS, RETINOPATHY_CLASSES, SPLIT_METHODS, UNLABELLED, BatchLoader,
                  BatchTransform, DataError, DataSource, ImageDataset, Preprocess, Sampling, Split, class_weights,
                  fit_preprocess, fundus_box, load_image, make_loader, open_data)

__all__ = ["BatchLoader", "BatchTransform", "DataError", "DataSource", "ImageDataset", "LAYOUTS",
           "LeukemiaLoader", "Preprocess", "RETINOPATHY_CLASSES", "RetinopathyLoader", "SPLIT_METHODS", "Sampling",
           "Split",
           "UNLABELLED", "class_weights", "fit_preprocess", "fundus_box", "load_image", "make_loader", "open_data"]


class LeukemiaLoader(ImageDataset):
    """The lab's data set by name: ``LeukemiaLoader("new_dataset", "train")[i] -> (image, label)``.

    ``mode`` is a split name (train / valid / test ...) or a test CSV name such as
    resnet_18_test.csv (the seeds' test18 / test50 / test152 work too). Items are uint8
    3xHxW tensors, already decoded, cropped and resized to ``image_size``; normalisation and
    augmentation run on the device, in ``BatchTransform``. An item of an unlabelled split has
    the label UNLABELLED (-1). ``prep`` (e.g. from a checkpoint) skips measuring the crop.
    """

    def __init__(self, root: str | Path = "new_dataset", mode: str = "train", image_size: int = 224,
                 cache_dir: Path | None = None, layout: str = "auto", prep: Preprocess | None = None) -> None:
        self.source = open_data(root, layout=layout)
        self.mode = mode
        if prep is None:
            prep = fit_preprocess(self.source.split("train"), image_size, imagenet_stats=True, cache_dir=cache_dir)
        super().__init__(self.source.split(mode), prep, cache_dir)


class RetinopathyLoader(ImageDataset):
    """The retinopathy lab's data set by name: ``RetinopathyLoader("new_dataset_retina", "train")[i]``.

    ``root`` holds the retina-lab layout (train_img.csv, train_label.csv, test_img.csv,
    test_label.csv) or Kaggle's (trainLabels.csv + train/). ``mode`` is "train", "valid" (a
    seeded, stratified, patient-level slice of the training list: ``open_data``'s defaults) or
    "test". An item is (uint8 3xHxW tensor, grade 0-4; see RETINOPATHY_CLASSES): the fundus disk
    cropped, padded to a black square and resized to ``image_size``, decoded once into
    ``cache_dir`` if given; normalisation and augmentation run on the device, in
    ``BatchTransform``. The preprocessing is fundus mode with ImageNet statistics unless
    ``prep`` (e.g. from a checkpoint) is given.
    """

    def __init__(self, root: str | Path, mode: str, image_size: int = 224, cache_dir: Path | None = None,
                 prep: Preprocess | None = None) -> None:
        self.source = open_data(root)
        if self.source.task != "retinopathy":
            raise DataError(f"{root} holds {self.source.task} data ({self.source.layout} layout), not retina "
                            f"photos; needs {LAYOUT_NEEDS['retina-lab']}, or {LAYOUT_NEEDS['retina-kaggle']}")
        self.mode = mode
        if prep is None:
            prep = fit_preprocess(self.source.split("train"), image_size, "fundus", imagenet_stats=True,
                                  cache_dir=cache_dir)
        super().__init__(self.source.split(mode), prep, cache_dir)
