"""Splits and data sources: the lists of images every layout produces, and the helpers that read them."""
from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from common.errors import UserError

UNLABELLED = -1  # label returned for an image of an unlabelled test split
IMAGE_EXTENSIONS = (".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff")
LAYOUT_NEEDS = {
    "lab": "train.csv and valid.csv with columns Path,label (test lists *test*.csv with Path)",
    "kaggle": "C-NMC_Leukemia/training_data/fold_*/all|hem/*.bmp",
    "retina-lab": "train_img.csv and train_label.csv (one column, no header), images/<name>.jpeg",
    "retina-kaggle": "trainLabels.csv (image,level) and train/<image>.jpeg",
    "csv": "labels.csv or a .csv with path,label columns",
    "folders": "train/<class>/* and valid/<class>/*, or <class>/* with at least two classes",
}


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
    patients: tuple[str, ...] | None = None  # per image where the source lists them (Kaggle's Patient_ID)

    def __len__(self) -> int:
        return len(self.paths)

    def fingerprint(self) -> str:
        """Hex digest of the file list with each file's size and mtime."""
        digest = hashlib.sha256()
        for path in self.paths:
            try:
                stat = path.stat()
            except OSError as exc:
                raise DataError(f"image {path} (listed in {self.source}) cannot be read: {exc.strerror}") from exc
            digest.update(f"{path}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()


@dataclass(frozen=True)
class DataSource:
    root: Path
    layout: str  # "lab", "kaggle", "csv", "folders" (retina: "retina-lab", "retina-kaggle")
    task: str  # "leukemia", "retinopathy" or "generic"
    classes: tuple[str, ...]
    splits: dict[str, Split]  # always "train" and "valid"; test splits by name
    note: str = ""  # how the split was made, e.g. patient-level split counts
    unreadable: tuple[tuple[str, str], ...] = ()  # (path, reason) of images left out (train.py --skip-unreadable)

    def split(self, name: str) -> Split:
        """The split called ``name`` (also accepts a test CSV file name); DataError listing the choices."""
        key = Path(name).stem if name.lower().endswith(".csv") else name
        seed_alias = re.fullmatch(r"test(\d+)", key)  # the seeds' modes: test18, test50, test152
        if seed_alias and f"resnet_{seed_alias[1]}_test" in self.splits:
            key = f"resnet_{seed_alias[1]}_test"
        if key not in self.splits:
            raise DataError(f"no split {name!r} in {self.root} ({self.layout} layout); "
                            f"choices: {', '.join(self.splits)}")
        return self.splits[key]

    @property
    def test_splits(self) -> list[str]:
        """Names of the splits other than train and valid."""
        return [name for name in self.splits if name not in ("train", "valid")]


def is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def images_in(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if is_image(p)), key=natural_key) if folder.is_dir() else []


def class_folders(folder: Path) -> list[Path]:
    """Sub-folders of ``folder`` that hold at least one image, sorted by name."""
    if not folder.is_dir():
        return []
    return sorted(d for d in folder.iterdir() if d.is_dir() and images_in(d))


def absolute(path: Path) -> Path:
    return Path(os.path.abspath(path))


def make_split(name: str, paths: Sequence[Path], labels: Sequence[int] | None,
                ids: Sequence[str], source: str, patients: Sequence[str] | None = None) -> Split:
    if not paths:
        raise DataError(f"split {name!r} is empty ({source} lists no images)")
    return Split(name, tuple(absolute(p) for p in paths),
                 None if labels is None else tuple(int(v) for v in labels), tuple(ids), source,
                 None if patients is None else tuple(patients))


def stratified_split(labels: Sequence[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, valid): each class shuffled with ``seed`` and ~``fraction`` of it validates."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    train, valid = [], []
    for value in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == value))
        n_valid = max(1, round(fraction * len(members))) if len(members) >= 2 else 0
        valid += members[:n_valid].tolist()
        train += members[n_valid:].tolist()
    return sorted(train), sorted(valid)


def read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise DataError(f"cannot read CSV {path}: {exc}") from exc


def column(frame: pd.DataFrame, csv: Path, wanted: Sequence[str]) -> list[str]:
    """The actual column names for ``wanted`` (case-insensitive); DataError naming what the CSV has."""
    by_lower = {str(c).strip().lower(): c for c in frame.columns}
    missing = [w for w in wanted if w.lower() not in by_lower]
    if missing:
        has = ", ".join(map(str, frame.columns)) or "no columns"
        raise DataError(f"{csv} has no {'/'.join(missing)} column (needs {', '.join(wanted)}; it has: {has})")
    return [by_lower[w.lower()] for w in wanted]


def resolve_path(written: str, csv: Path, line: int, bases: Sequence[Path]) -> Path:
    """Find the file a CSV row names: absolute as is, else relative to each base in turn."""
    text = written.strip()
    if not text:
        raise DataError(f"{csv} line {line}: empty image path")
    candidate = Path(text.replace("\\", "/"))  # CSVs written on Windows; "/" works everywhere
    tries = [candidate] if candidate.is_absolute() else [base / candidate for base in bases]
    for path in tries:
        if path.is_file():
            return path
    # The data folder was renamed or moved ("./new_dataset/train/1.bmp" under --data lab3/): try
    # ever shorter tails of the written path, only inside the CSV's own folder, never elsewhere.
    parts = [p for p in candidate.parts if p not in (".", "/")]
    for k in range(1, len(parts)):
        path = csv.parent.joinpath(*parts[k:])
        if path.is_file():
            return path
    looked = ", ".join(str(p) for p in tries)
    raise DataError(f"{csv} line {line}: image {written!r} not found (looked for {looked})")


def int_label(value: str, csv: Path, line: int, classes: Sequence[str]) -> int:
    text = value.strip()
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not (number.is_integer() and 0 <= number < len(classes)):
        allowed = ", ".join(f"{i} ({name})" for i, name in enumerate(classes))
        raise DataError(f"{csv} line {line}: label {value!r} is not one of {allowed}")
    return int(number)


def read_list(csv: Path, labelled: bool, classes: Sequence[str],
               bases: Sequence[Path]) -> tuple[list[Path], list[int] | None, list[str]]:
    """Read a Path[,label] CSV: resolved paths, labels (None if unlabelled) and ids as written."""
    frame = read_csv(csv)
    wanted = ["Path", "label"] if labelled else ["Path"]
    columns = column(frame, csv, wanted)
    ids = frame[columns[0]].tolist()
    lines = range(2, len(ids) + 2)  # line 1 is the header
    paths = [resolve_path(written, csv, line, bases) for written, line in zip(ids, lines)]
    labels = None
    if labelled:
        labels = [int_label(v, csv, line, classes) for v, line in zip(frame[columns[1]], lines)]
    return paths, labels, ids
