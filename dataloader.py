"""Data: layouts on disk, preprocessing, the decode-once cache and on-device augmentation.

INTERFACE STUB - the signatures below are the contract train.py / eval.py code against.
The implementation replaces every ``raise NotImplementedError``.

Pipeline
    open_data(root)            -> DataSource with Splits (file lists, labels, Kaggle ids)
    fit_preprocess(train, ...) -> Preprocess (crop measured on the data, mean/std of train)
    ImageDataset(split, prep)  -> uint8 3xHxW tensors, decoded+cropped+resized once (cache)
    make_loader(dataset, ...)  -> batches (uint8 Nx3xHxW, int64 N) on the CPU
    BatchTransform(prep, ...)  -> on the device: augmentation (train) + normalisation -> float
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch.utils.data import Dataset

from errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LEUKEMIA_CLASSES = ("normal", "blast")  # 0 = hem (normal cell), 1 = all (leukemia blast)
RETINOPATHY_CLASSES = ("no DR", "mild", "moderate", "severe", "proliferative")
UNLABELLED = -1  # label returned for an image of an unlabelled test split


class DataError(UserError):
    """A problem with the data on disk; the message names the file (and CSV row)."""


@dataclass(frozen=True)
class Split:
    """One list of images: the resolved files, their labels and their ids as written."""

    name: str  # "train", "valid", "test", "resnet_18_test", ...
    paths: tuple[Path, ...]
    labels: tuple[int, ...] | None  # None for an unlabelled split
    ids: tuple[str, ...]  # as written in the source, e.g. "./new_dataset/test/0.bmp" (Kaggle ID)
    source: str  # where the list came from, for messages

    def fingerprint(self) -> str:
        """Hex digest of the file list with each file's size and mtime."""
        raise NotImplementedError


@dataclass(frozen=True)
class DataSource:
    root: Path
    layout: str  # "lab", "kaggle", "csv", "folders" (retina: "retina-lab", "retina-kaggle")
    task: str  # "leukemia", "retinopathy" or "generic"
    classes: tuple[str, ...]
    splits: dict[str, Split]  # always "train" and "valid"; test splits by name
    note: str = ""  # how the split was made, e.g. patient-level split counts

    def split(self, name: str) -> Split:
        """The split called ``name`` (also accepts a test CSV file name); DataError listing the choices."""
        raise NotImplementedError


def open_data(root: str | Path, layout: str = "auto", split: str = "patient",
              valid_fraction: float = 0.2, seed: int = 0) -> DataSource:
    """Find and read a data set under ``root`` (layout auto-detected unless named)."""
    raise NotImplementedError


@dataclass(frozen=True)
class Preprocess:
    """Everything needed to turn a file into the model's input; stored in checkpoints."""

    image_size: int = 224
    crop: float = 1.0  # side of the centred square kept, as a fraction of the shorter side
    mode: str = "center"  # "center" (cells) or "fundus" (crop to the retina disk)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def fit_preprocess(train: Split, image_size: int, mode: str = "center",
                   imagenet_stats: bool = False, cache_dir: Path | None = None) -> Preprocess:
    """Measure the crop on the training images and their mean/std (cached in ``cache_dir``)."""
    raise NotImplementedError


class ImageDataset(Dataset):
    """Preprocessed images as uint8 3xHxW tensors, read from a memory-mapped cache when given."""

    def __init__(self, split: Split, prep: Preprocess, cache_dir: Path | None = None) -> None:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        raise NotImplementedError

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class BatchLoader:
    """Iterable of (uint8 Nx3xHxW, int64 N) batches; ``set_epoch`` fixes the shuffle order."""

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        raise NotImplementedError


def make_loader(dataset: ImageDataset, batch_size: int, shuffle: bool, seed: int = 0,
                workers: int = 0, pin_memory: bool = False, drop_last: bool = False,
                rank: int = 0, world_size: int = 1) -> BatchLoader:
    raise NotImplementedError


class BatchTransform(torch.nn.Module):
    """uint8 batch on the device -> normalised float batch; random per-sample augmentation if ``train``."""

    def __init__(self, prep: Preprocess, train: bool) -> None:
        super().__init__()
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError
