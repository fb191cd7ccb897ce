"""Data: layouts on disk, preprocessing, the decode-once cache and on-device augmentation.

Pipeline
    open_data(root)            -> DataSource with Splits (file lists, labels, Kaggle ids)
    fit_preprocess(train, ...) -> Preprocess (crop measured on the data, mean/std of train)
    ImageDataset(split, prep)  -> uint8 3xHxW tensors, decoded+cropped+resized once (cache)
    make_loader(dataset, ...)  -> batches (uint8 Nx3xHxW, int64 N) on the CPU (balanced=True: ~equal classes)
    BatchTransform(prep, ...)  -> on the device: augmentation (train) + normalisation -> float
    class_weights(labels, ...) -> per-class loss weights against class imbalance

Layouts that ``open_data`` recognises (``layout="auto"`` tries them in this order):
    lab      train.csv + valid.csv (Path,label) and test lists such as resnet_18_test.csv (Path)
    kaggle   C-NMC_Leukemia/training_data/fold_*/{all,hem}/*.bmp (+ validation/testing data)
    retina-lab     train_img.csv + train_label.csv (+ test_img.csv, test_label.csv): one column, no
                   header; images <name>.jpeg in images/ or the root (diabetic retinopathy, grades 0-4)
    retina-kaggle  trainLabels.csv (image,level) + train/<image>.jpeg (+ test/, testLabels.csv or
                   retinopathy_solution.csv): Kaggle's Diabetic Retinopathy Detection
    csv      labels.csv, or any .csv with path,label columns; paths relative to the CSV
    folders  train/<class>/* + valid/<class>/* (+ test/*), or <class>/* only
"""
from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import re
import uuid
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LEUKEMIA_CLASSES = ("normal", "blast")  # 0 = hem (normal cell), 1 = all (leukemia blast)
RETINOPATHY_CLASSES = ("no DR", "mild", "moderate", "severe", "proliferative")
UNLABELLED = -1  # label returned for an image of an unlabelled test split

LAYOUTS = ("lab", "kaggle", "retina-lab", "retina-kaggle", "csv", "folders")
SPLIT_METHODS = ("patient", "fold", "random")
PREPROCESS_MODES = ("center", "fundus")
IMAGE_EXTENSIONS = (".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff")
LAYOUT_NEEDS = {
    "lab": "train.csv and valid.csv with columns Path,label (test lists *test*.csv with Path)",
    "kaggle": "C-NMC_Leukemia/training_data/fold_*/all|hem/*.bmp",
    "retina-lab": "train_img.csv and train_label.csv (one column, no header), images/<name>.jpeg",
    "retina-kaggle": "trainLabels.csv (image,level) and train/<image>.jpeg",
    "csv": "labels.csv or a .csv with path,label columns",
    "folders": "train/<class>/* and valid/<class>/*, or <class>/* with at least two classes",
}
CELL_THRESHOLD = 16  # a pixel whose brightest channel exceeds this (of 255) belongs to the cell
CROP_MARGIN = 0.02  # added to the measured crop, as a fraction of the shorter side ...
CROP_BORDER_PX = 3  # ... or enough for this many black output pixels on each side, if more
CROP_SAMPLE = 256  # training images measured by fit_preprocess
FUNDUS_THRESHOLD = 12  # retina: brightest channel above this (of 255), after a 3x3 median, is the disk
FUNDUS_MASK_SIDE = 512  # the disk is found on a copy reduced to at most about this many pixels a side
RETINA_EXTENSIONS = (".jpeg", ".jpg", ".png")  # tried in this order for a name listed without one
CLASS_WEIGHTINGS = ("none", "inverse", "sqrt")  # the kinds of class_weights
COLOUR_JITTER = {"center": (0.2, 0.2, 0.2, 0.04),  # BatchTransform's brightness, contrast, saturation, hue
                 "fundus": (0.1, 0.1, 0.1, 0.02)}  # mild: lesion colour (red bleeds, yellow exudates) is the signal
CACHE_VERSION = 2  # bump when load_image changes the pixels it produces (2: fundus disk found robustly)
_CHUNK = 64  # images per cache-building task


class DataError(UserError):
    """A problem with the data on disk; the message names the file (and CSV row)."""


# --------------------------------------------------------------------------- splits


@dataclass(frozen=True)
class Split:
    """One list of images: the resolved files, their labels and their ids as written."""

    name: str  # "train", "valid", "test", "resnet_18_test", ...
    paths: tuple[Path, ...]
    labels: tuple[int, ...] | None  # None for an unlabelled split
    ids: tuple[str, ...]  # as written in the source, e.g. "./new_dataset/test/0.bmp" (Kaggle ID)
    source: str  # where the list came from, for messages

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


def open_data(root: str | Path, layout: str = "auto", split: str = "patient",
              valid_fraction: float = 0.2, seed: int = 0) -> DataSource:
    """Find and read a data set under ``root`` (layout auto-detected unless named).

    ``split`` says how a layout without a fixed validation list is divided: "patient"
    (Kaggle and retina: no patient on both sides, stratified; elsewhere stratified by image),
    "fold" (Kaggle: the last fold validates) or "random" (stratified, image level).
    Every image path is checked here; pixels are read later, by ``load_image``.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data root {root} does not exist or is not a folder")
    if layout != "auto" and layout not in LAYOUTS:
        raise DataError(f"unknown layout {layout!r}; choices: auto, {', '.join(LAYOUTS)}")
    if split not in SPLIT_METHODS:
        raise DataError(f"unknown split method {split!r}; choices: {', '.join(SPLIT_METHODS)}")
    if not 0.0 < valid_fraction < 1.0:
        raise DataError(f"valid_fraction must be between 0 and 1, got {valid_fraction}")
    found = layout if layout != "auto" else _detect_layout(root)
    if found is None:
        looked = "; ".join(f"{name}: {needs}" for name, needs in LAYOUT_NEEDS.items())
        inside = [child.name for child in sorted(root.iterdir()) if child.is_dir() and _detect_layout(child)]
        hint = f" (a data set is in {', '.join(inside)}/: pass that folder)" if inside else ""
        raise DataError(f"no recognised data layout in {root}{hint}; looked for {looked}")
    if split == "fold" and found != "kaggle":
        raise DataError(f"split='fold' needs the kaggle layout, but {root} has the {found} layout")
    if found == "lab":
        return _open_lab(root)
    if found == "kaggle":
        return _open_kaggle(root, split, valid_fraction, seed)
    if found == "retina-lab":
        return _open_retina_lab(root, split, valid_fraction, seed)
    if found == "retina-kaggle":
        return _open_retina_kaggle(root, split, valid_fraction, seed)
    if found == "csv":
        return _open_csv(root, split, valid_fraction, seed)
    return _open_folders(root, split, valid_fraction, seed)


def _detect_layout(root: Path) -> str | None:
    if (root / "train.csv").is_file() and (root / "valid.csv").is_file():
        return "lab"
    if _kaggle_base(root) is not None:
        return "kaggle"
    if (root / "train_img.csv").is_file() and (root / "train_label.csv").is_file():
        return "retina-lab"
    if (root / "trainLabels.csv").is_file():
        return "retina-kaggle"
    if _find_label_csv(root) is not None:
        return "csv"
    if _class_folders(root / "train") or (not (root / "train").exists() and len(_class_folders(root)) >= 2):
        return "folders"
    return None


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _images_in(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if _is_image(p)), key=_natural_key) if folder.is_dir() else []


def _class_folders(folder: Path) -> list[Path]:
    """Sub-folders of ``folder`` that hold at least one image, sorted by name."""
    if not folder.is_dir():
        return []
    return sorted(d for d in folder.iterdir() if d.is_dir() and _images_in(d))


def _absolute(path: Path) -> Path:
    return Path(os.path.abspath(path))


def _make_split(name: str, paths: Sequence[Path], labels: Sequence[int] | None,
                ids: Sequence[str], source: str) -> Split:
    if not paths:
        raise DataError(f"split {name!r} is empty ({source} lists no images)")
    return Split(name, tuple(_absolute(p) for p in paths),
                 None if labels is None else tuple(int(v) for v in labels), tuple(ids), source)


def _stratified_split(labels: Sequence[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
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


# ----------------------------------------------------------------- CSV reading helpers


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise DataError(f"cannot read CSV {path}: {exc}") from exc


def _column(frame: pd.DataFrame, csv: Path, wanted: Sequence[str]) -> list[str]:
    """The actual column names for ``wanted`` (case-insensitive); DataError naming what the CSV has."""
    by_lower = {str(c).strip().lower(): c for c in frame.columns}
    missing = [w for w in wanted if w.lower() not in by_lower]
    if missing:
        has = ", ".join(map(str, frame.columns)) or "no columns"
        raise DataError(f"{csv} has no {'/'.join(missing)} column (needs {', '.join(wanted)}; it has: {has})")
    return [by_lower[w.lower()] for w in wanted]


def _resolve(written: str, csv: Path, line: int, bases: Sequence[Path]) -> Path:
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


def _int_label(value: str, csv: Path, line: int, classes: Sequence[str]) -> int:
    text = value.strip()
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not (number.is_integer() and 0 <= number < len(classes)):
        allowed = ", ".join(f"{i} ({name})" for i, name in enumerate(classes))
        raise DataError(f"{csv} line {line}: label {value!r} is not one of {allowed}")
    return int(number)


def _read_list(csv: Path, labelled: bool, classes: Sequence[str],
               bases: Sequence[Path]) -> tuple[list[Path], list[int] | None, list[str]]:
    """Read a Path[,label] CSV: resolved paths, labels (None if unlabelled) and ids as written."""
    frame = _read_csv(csv)
    wanted = ["Path", "label"] if labelled else ["Path"]
    columns = _column(frame, csv, wanted)
    ids = frame[columns[0]].tolist()
    lines = range(2, len(ids) + 2)  # line 1 is the header
    paths = [_resolve(written, csv, line, bases) for written, line in zip(ids, lines)]
    labels = None
    if labelled:
        labels = [_int_label(v, csv, line, classes) for v, line in zip(frame[columns[1]], lines)]
    return paths, labels, ids


# ------------------------------------------------------------------------ lab layout


def _open_lab(root: Path) -> DataSource:
    # "./new_dataset/train/1.bmp" is written relative to root's parent. Never the working
    # directory: that could silently mix in another data set's file of the same name.
    bases = [root.parent, root]
    splits = {}
    for name in ("train", "valid"):
        csv = root / f"{name}.csv"
        if not csv.is_file():
            raise DataError(f"lab layout needs {csv} (columns Path,label)")
        paths, labels, ids = _read_list(csv, True, LEUKEMIA_CLASSES, bases)
        splits[name] = _make_split(name, paths, labels, ids, str(csv))
    known = _read_test_labels(root / "test_labels.csv", bases)
    skipped = []
    for csv in sorted(root.glob("*test*.csv")):
        if csv.name == "test_labels.csv":
            continue
        frame = _read_csv(csv)
        if not any(str(c).strip().lower() == "path" for c in frame.columns):
            skipped.append(csv.name)
            continue
        paths, _, ids = _read_list(csv, False, LEUKEMIA_CLASSES, bases)
        labels = None
        if known is not None:
            labels = [_test_label(known, written, path, csv, line) for line, (written, path)
                      in enumerate(zip(ids, paths), start=2)]
        splits[csv.stem] = _make_split(csv.stem, paths, labels, ids, str(csv))
    counts = ", ".join(f"{name} {len(s)}{'' if s.labels else ' (unlabelled)'}" for name, s in splits.items())
    note = f"lab layout: {counts}"
    if known is not None:
        note += "; test labels from test_labels.csv"
    if skipped:
        note += f"; ignored {', '.join(skipped)} (no Path column)"
    return DataSource(root, "lab", "leukemia", LEUKEMIA_CLASSES, splits, note)


def _read_test_labels(csv: Path, bases: Sequence[Path]) -> dict[str, int] | None:
    """test_labels.csv as {normalised path string or resolved path: label}, None if absent."""
    if not csv.is_file():
        return None
    paths, labels, ids = _read_list(csv, True, LEUKEMIA_CLASSES, bases)
    known = {}
    for written, path, label in zip(ids, paths, labels):
        known[os.path.normpath(written.strip())] = label
        known[str(_absolute(path))] = label
    return known


def _test_label(known: dict[str, int], written: str, path: Path, csv: Path, line: int) -> int:
    for key in (os.path.normpath(written.strip()), str(_absolute(path))):
        if key in known:
            return known[key]
    raise DataError(f"{csv} line {line}: {written!r} has no label in test_labels.csv")


# --------------------------------------------------------------------- kaggle layout


def _kaggle_base(root: Path) -> Path | None:
    for base in (root / "C-NMC_Leukemia", root):
        if any((base / "training_data").glob("fold_*")):
            return base
    return None


def _patient_id(path: Path) -> str:
    fields = path.stem.split("_")
    if len(fields) < 3:
        raise DataError(f"cannot read the patient id from {path} (expected names like UID_11_10_1_all.bmp)")
    return fields[1]


def _open_kaggle(root: Path, method: str, valid_fraction: float, seed: int) -> DataSource:
    base = _kaggle_base(root)
    if base is None:
        raise DataError(f"kaggle layout needs {root}/{LAYOUT_NEEDS['kaggle']}")
    paths, labels, folds = [], [], []
    for fold in sorted((base / "training_data").glob("fold_*")):
        for class_dir, label in (("hem", 0), ("all", 1)):
            found = _images_in(fold / class_dir)
            paths += found
            labels += [label] * len(found)
            folds += [fold.name] * len(found)
    if not paths:
        raise DataError(f"no images in {base / 'training_data'}/fold_*/all|hem/")
    patients = [_patient_id(p) for p in paths]
    train, valid, note = _kaggle_partition(labels, folds, patients, method, valid_fraction, seed)
    ids = [p.relative_to(base).as_posix() for p in paths]
    source = str(base / "training_data")
    splits = {name: _make_split(name, [paths[i] for i in idx], [labels[i] for i in idx],
                                [ids[i] for i in idx], source)
              for name, idx in (("train", train), ("valid", valid))}
    splits.update(_kaggle_tests(base))
    return DataSource(root, "kaggle", "leukemia", LEUKEMIA_CLASSES, splits, note)


def _kaggle_partition(labels: list[int], folds: list[str], patients: list[str], method: str,
                      valid_fraction: float, seed: int) -> tuple[list[int], list[int], str]:
    """Training-data indices for (train, valid) and a note saying how they were chosen."""
    if method == "fold":
        names = sorted(set(folds))
        if len(names) < 2:
            raise DataError(f"split='fold' needs at least two fold_* folders, found {', '.join(names)}")
        train = [i for i, f in enumerate(folds) if f != names[-1]]
        valid = [i for i, f in enumerate(folds) if f == names[-1]]
        how = f"fold split: {'+'.join(names[:-1])} train / {names[-1]} valid"
    elif method == "patient":
        ids = sorted(set(patients))
        first_label = {p: labels[patients.index(p)] for p in ids}
        train_p, valid_p = _stratified_split([first_label[p] for p in ids], valid_fraction, seed)
        valid_set = {ids[i] for i in valid_p}
        train = [i for i, p in enumerate(patients) if p not in valid_set]
        valid = [i for i, p in enumerate(patients) if p in valid_set]
        how = f"patient-level split (seed {seed}): {len(train_p)} patients train / {len(valid_p)} valid"
    else:
        train, valid = _stratified_split(labels, valid_fraction, seed)
        how = f"random image-level split (seed {seed})"
    shared = {patients[i] for i in train} & {patients[i] for i in valid}
    leak = ("no patient in both" if not shared else
            f"{len(shared)} patients in both (their cells leak into validation and inflate its scores)")
    return train, valid, f"{how}; {len(train)} / {len(valid)} images; {leak}"


def _kaggle_tests(base: Path) -> dict[str, Split]:
    splits = {}
    prelim = base / "validation_data" / "C-NMC_test_prelim_phase_data"
    if prelim.is_dir():
        csv = next((c for c in (prelim.parent / f"{prelim.name}_labels.csv", prelim / f"{prelim.name}_labels.csv")
                    if c.is_file()), None)
        if csv is None:
            found = _images_in(prelim)
            splits["test"] = _make_split("test", found, None, [p.name for p in found], str(prelim))
        else:
            splits["test"] = _kaggle_prelim(prelim, csv)
    final = base / "testing_data" / "C-NMC_test_final_phase_data"
    if final.is_dir():
        found = _images_in(final)
        splits["final_test"] = _make_split("final_test", found, None, [p.name for p in found], str(final))
    return splits


def _kaggle_prelim(folder: Path, csv: Path) -> Split:
    frame = _read_csv(csv)
    names_col, labels_col = _column(frame, csv, ["new_names", "labels"])
    names = frame[names_col].tolist()
    lines = range(2, len(names) + 2)
    paths = [_resolve(name, csv, line, [folder]) for name, line in zip(names, lines)]
    labels = [_int_label(v, csv, line, LEUKEMIA_CLASSES) for v, line in zip(frame[labels_col], lines)]
    unlisted = sorted({p.name for p in _images_in(folder)} - {p.name for p in paths})
    if unlisted:
        raise DataError(f"{folder / unlisted[0]} is not listed in {csv} ({len(unlisted)} images are not)")
    return _make_split("test", paths, labels, names, str(csv))


# ------------------------------------------------------------------- retina layouts

_EYE_NAME = re.compile(r"([^_]+)_(left|right)", re.IGNORECASE)  # Kaggle DR names: <patient>_<eye>, e.g. 10_left


def _read_column(csv: Path) -> list[str]:
    """The values of a one-column CSV without a header (value i is on line i + 1), stripped."""
    try:
        frame = pd.read_csv(csv, header=None, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except pd.errors.EmptyDataError:
        return []
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        raise DataError(f"cannot read CSV {csv}: {exc}") from exc
    if frame.shape[1] != 1:
        raise DataError(f"{csv} has {frame.shape[1]} columns; the retina lab's CSVs have one column and no header")
    values = [value.strip() for value in frame[0]]
    while values and not values[-1]:  # a trailing blank line is not a row
        values.pop()
    return values


def _retina_index(folders: Sequence[Path]) -> dict[str, Path]:
    """{file name and name without extension: file} for the images in ``folders`` (earlier ones win).

    One directory listing instead of a stat per extension and folder for each of ~35,000 names.
    """
    index: dict[str, Path] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        with os.scandir(folder) as entries:
            found = [Path(e.path) for e in entries if e.name[:1] != "." and e.is_file()
                     and Path(e.name).suffix.lower() in RETINA_EXTENSIONS]
        for path in sorted(found, key=lambda p: RETINA_EXTENSIONS.index(p.suffix.lower())):
            index.setdefault(path.name, path)
            index.setdefault(path.stem, path)
    return index


def _retina_images(names: Sequence[str], csv: Path, first_line: int, index: dict[str, Path],
                   folders: Sequence[Path]) -> list[Path]:
    """The image file of each listed name; DataError naming the CSV line of the first one missing."""
    paths = []
    for line, name in enumerate(names, start=first_line):
        if not name:
            raise DataError(f"{csv} line {line}: empty image name")
        if name not in index:
            places = " or ".join(f"{folder}/" for folder in folders)
            raise DataError(f"{csv} line {line}: image {name!r} not found "
                            f"(looked for {name}{'|'.join(RETINA_EXTENSIONS)} in {places})")
        paths.append(index[name])
    return paths


def _grades(values: Sequence[str], csv: Path, first_line: int) -> list[int]:
    return [_int_label(v, csv, line, RETINOPATHY_CLASSES) for line, v in enumerate(values, start=first_line)]


def _eye_patients(names: Sequence[str]) -> list[str] | None:
    """The patient id of each Kaggle-style name (10_left -> "10"); None if any name is not like that."""
    matches = [_EYE_NAME.fullmatch(name) for name in names]
    return [m[1] for m in matches] if all(matches) else None


def _retina_partition(grades: list[int], patients: list[str] | None, method: str, valid_fraction: float,
                      seed: int) -> tuple[list[int], list[int], str]:
    """Indices (train, valid) and a note: with ``method`` "patient" and patient ids, both eyes on one side.

    Patients are stratified by their worse eye's grade, so the rare grades reach validation too.
    """
    if method == "patient" and patients is not None:
        ids = sorted(set(patients))
        worst: dict[str, int] = {}
        for patient, grade in zip(patients, grades):
            worst[patient] = max(grade, worst.get(patient, 0))
        train_p, valid_p = _stratified_split([worst[p] for p in ids], valid_fraction, seed)
        valid_set = {ids[i] for i in valid_p}
        train = [i for i, p in enumerate(patients) if p not in valid_set]
        valid = [i for i, p in enumerate(patients) if p in valid_set]
        how = (f"patient-level split stratified by the worse eye (seed {seed}): {len(train_p)} patients train / "
               f"{len(valid_p)} valid, both eyes of a patient on the same side")
    else:
        train, valid = _stratified_split(grades, valid_fraction, seed)
        why = " (the names carry no patient id)" if method == "patient" else ""
        how = f"stratified random image-level split (seed {seed}){why}"
    note = f"{how}; {len(train)} / {len(valid)} images"
    if patients is not None and method != "patient":
        shared = {patients[i] for i in train} & {patients[i] for i in valid}
        note += f"; {len(shared)} patients have an eye on each side (a leak that inflates validation scores)"
    return train, valid, note


def _retina_splits(paths: list[Path], grades: list[int], names: list[str], train: list[int], valid: list[int],
                   source: str) -> dict[str, Split]:
    return {name: _make_split(name, [paths[i] for i in idx], [grades[i] for i in idx], [names[i] for i in idx], source)
            for name, idx in (("train", train), ("valid", valid))}


def _read_retina_lab_list(root: Path, split: str, index: dict[str, Path], folders: Sequence[Path],
                          labelled: bool) -> tuple[list[Path], list[int] | None, list[str]]:
    """<split>_img.csv (and <split>_label.csv): paths, grades and names, row by row."""
    img_csv, label_csv = root / f"{split}_img.csv", root / f"{split}_label.csv"
    names = _read_column(img_csv)
    grades = None
    if labelled:
        values = _read_column(label_csv)
        if len(values) != len(names):
            raise DataError(f"{img_csv} has {len(names)} rows but {label_csv} has {len(values)}; "
                            f"they must list the same images in the same order")
        grades = _grades(values, label_csv, 1)
    return _retina_images(names, img_csv, 1, index, folders), grades, names


def _open_retina_lab(root: Path, method: str, valid_fraction: float, seed: int) -> DataSource:
    """The retinopathy lab: train_img/train_label (+ test_img/test_label); valid is a slice of train."""
    for name in ("train_img.csv", "train_label.csv"):
        if not (root / name).is_file():
            raise DataError(f"retina-lab layout needs {root / name} (one column, no header)")
    folders = [root / "images", root]
    index = _retina_index(folders)
    paths, grades, names = _read_retina_lab_list(root, "train", index, folders, labelled=True)
    if not names:
        raise DataError(f"split 'train' is empty ({root / 'train_img.csv'} lists no images)")
    train, valid, how = _retina_partition(grades, _eye_patients(names), method, valid_fraction, seed)
    splits = _retina_splits(paths, grades, names, train, valid, str(root / "train_img.csv"))
    test_img, test_label = root / "test_img.csv", root / "test_label.csv"
    if test_label.is_file() and not test_img.is_file():
        raise DataError(f"{test_label} has no {test_img.name} beside it to say which images it labels")
    if test_img.is_file():
        paths, grades, names = _read_retina_lab_list(root, "test", index, folders, labelled=test_label.is_file())
        splits["test"] = _make_split("test", paths, grades, names, str(test_img))
    note = f"retina-lab layout: valid from train_img.csv by a {how}"
    if "test" in splits:
        note += f"; test {len(splits['test'])}{'' if splits['test'].labels else ' (unlabelled)'}"
    return DataSource(root, "retina-lab", "retinopathy", RETINOPATHY_CLASSES, splits, note)


def _read_image_level(csv: Path, folders: Sequence[Path]) -> tuple[list[Path], list[int], list[str]]:
    """A Kaggle image,level CSV (other columns, such as Usage, ignored): paths, grades, names."""
    frame = _read_csv(csv)
    image_col, level_col = _column(frame, csv, ["image", "level"])
    names = [name.strip() for name in frame[image_col]]
    paths = _retina_images(names, csv, 2, _retina_index(folders), folders)
    return paths, _grades(frame[level_col].tolist(), csv, 2), names


def _open_retina_kaggle(root: Path, method: str, valid_fraction: float, seed: int) -> DataSource:
    """Kaggle's Diabetic Retinopathy Detection: trainLabels.csv + train/, optionally test/ (+ its labels)."""
    csv = root / "trainLabels.csv"
    if not csv.is_file():
        raise DataError(f"retina-kaggle layout needs {csv} (columns image,level)")
    paths, grades, names = _read_image_level(csv, [root / "train", root])
    if not names:
        raise DataError(f"split 'train' is empty ({csv} lists no images)")
    patients = _eye_patients(names)
    if method == "patient" and patients is None:
        line, name = next((i, n) for i, n in enumerate(names, start=2) if not _EYE_NAME.fullmatch(n))
        raise DataError(f"{csv} line {line}: no patient id in image name {name!r} (Kaggle names look like 10_left); "
                        f"use split='random' for an image-level split")
    train, valid, how = _retina_partition(grades, patients, method, valid_fraction, seed)
    splits = _retina_splits(paths, grades, names, train, valid, str(csv))
    test = root / "test"
    labels = next((c for c in (root / "testLabels.csv", root / "retinopathy_solution.csv") if c.is_file()), None)
    if test.is_dir() and labels is not None:
        test_paths, test_grades, test_names = _read_image_level(labels, [test])
        splits["test"] = _make_split("test", test_paths, test_grades, test_names, str(labels))
    elif test.is_dir():
        found = _images_in(test)
        splits["test"] = _make_split("test", found, None, [p.stem for p in found], str(test))
    note = f"retina-kaggle layout: {how}"
    if "test" in splits:
        note += f"; test {len(splits['test'])} " + (f"labelled by {labels.name}" if labels else "(unlabelled)")
    return DataSource(root, "retina-kaggle", "retinopathy", RETINOPATHY_CLASSES, splits, note)


# ------------------------------------------------------------------ generic layouts


def _find_label_csv(root: Path) -> Path | None:
    if (root / "labels.csv").is_file():
        return root / "labels.csv"
    for csv in sorted(root.glob("*.csv")):
        header = {str(c).strip().lower() for c in _read_csv(csv).columns}
        if {"path", "label"} <= header:
            return csv
    return None


def _class_names(values: Sequence[str], csv: Path) -> tuple[tuple[str, ...], list[int]]:
    """Classes and integer labels: integers are used as given, strings map to sorted names."""
    stripped = [v.strip() for v in values]
    for line, value in enumerate(stripped, start=2):
        if not value:
            raise DataError(f"{csv} line {line}: empty label")
    if all(re.fullmatch(r"\d+", v) for v in stripped):
        numbers = [int(v) for v in stripped]
        return tuple(str(i) for i in range(max(numbers) + 1)), numbers
    if any(re.fullmatch(r"-\d+", v) for v in stripped):
        line = next(i for i, v in enumerate(stripped, start=2) if v.startswith("-"))
        raise DataError(f"{csv} line {line}: label {stripped[line - 2]!r} is negative")
    classes = tuple(sorted(set(stripped)))
    return classes, [classes.index(v) for v in stripped]


def _open_csv(root: Path, method: str, valid_fraction: float, seed: int) -> DataSource:
    csv = _find_label_csv(root)
    if csv is None:
        raise DataError(f"csv layout needs {root}/{LAYOUT_NEEDS['csv']}")
    frame = _read_csv(csv)
    path_col, label_col = _column(frame, csv, ["path", "label"])
    ids = frame[path_col].tolist()
    paths = [_resolve(w, csv, line, [csv.parent, csv.parent.parent])
             for line, w in enumerate(ids, start=2)]
    classes, labels = _class_names(frame[label_col].tolist(), csv)
    splits, note = _split_labelled(paths, labels, ids, str(csv), method, valid_fraction, seed)
    return DataSource(root, "csv", "generic", classes, splits, note)


def _split_labelled(paths: list[Path], labels: list[int], ids: list[str], source: str, method: str,
                    valid_fraction: float, seed: int) -> tuple[dict[str, Split], str]:
    """train/valid by a stratified seeded image-level split (no patient ids outside Kaggle)."""
    train, valid = _stratified_split(labels, valid_fraction, seed)
    splits = {name: _make_split(name, [paths[i] for i in idx], [labels[i] for i in idx],
                                [ids[i] for i in idx], source)
              for name, idx in (("train", train), ("valid", valid))}
    why = " (no patient ids in this layout)" if method == "patient" else ""
    note = f"stratified random image-level split (seed {seed}){why}: {len(train)} train / {len(valid)} valid"
    return splits, note


def _open_folders(root: Path, method: str, valid_fraction: float, seed: int) -> DataSource:
    classes = tuple(d.name for d in _class_folders(root / "train"))
    if classes:
        splits = {}
        for name in ("train", "valid"):
            folder = root / name
            if name == "valid" and not folder.is_dir() and (root / "val").is_dir():
                folder = root / "val"
            splits[name] = _folder_split(name, root, folder, classes)
        test = root / "test"
        if test.is_dir():
            if _class_folders(test):
                splits["test"] = _folder_split("test", root, test, classes)
            else:
                found = _images_in(test)
                splits["test"] = _make_split("test", found, None,
                                             [p.relative_to(root).as_posix() for p in found], str(test))
        note = f"folders layout: {', '.join(f'{n} {len(s)}' for n, s in splits.items())}"
        return DataSource(root, "folders", "generic", classes, splits, note)
    folders = _class_folders(root)
    if len(folders) < 2:
        raise DataError(f"folders layout needs {root}/{LAYOUT_NEEDS['folders']}")
    classes = tuple(d.name for d in folders)
    paths, labels = [], []
    for label, folder in enumerate(folders):
        found = _images_in(folder)
        paths += found
        labels += [label] * len(found)
    ids = [p.relative_to(root).as_posix() for p in paths]
    splits, note = _split_labelled(paths, labels, ids, str(root), method, valid_fraction, seed)
    return DataSource(root, "folders", "generic", classes, splits, note)


def _folder_split(name: str, root: Path, folder: Path, classes: tuple[str, ...]) -> Split:
    paths, labels = [], []
    for class_dir in _class_folders(folder):
        if class_dir.name not in classes:
            raise DataError(f"{class_dir} is not one of the classes in {root / 'train'}: {', '.join(classes)}")
        found = _images_in(class_dir)
        paths += found
        labels += [classes.index(class_dir.name)] * len(found)
    return _make_split(name, paths, labels, [p.relative_to(root).as_posix() for p in paths], str(folder))


# --------------------------------------------------------------------- preprocessing


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

    def pixel_key(self) -> dict:
        """The settings that change the cached pixels (mean/std do not)."""
        return {"image_size": self.image_size, "crop": round(self.crop, 6), "mode": self.mode}


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: 16-bit scaled to 8 bits, transparency composited onto black."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        wide = np.asarray(img).astype(np.float32)
        scale = 1.0 if img.mode == "F" else 1.0 / 257.0  # 65535 -> 255
        return Image.fromarray(np.clip(wide * scale + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = np.asarray(img.convert("RGBA")).astype(np.uint16)
        return Image.fromarray(((rgba[..., :3] * rgba[..., 3:] + 127) // 255).astype(np.uint8))
    return img if img.mode == "RGB" else img.convert("RGB")


def _open_rgb(path: Path, draft_side: int | None = None) -> Image.Image:
    """Decode ``path`` fully into an RGB image; DataError naming the file if it cannot be read."""
    try:
        with Image.open(path) as img:
            if draft_side and img.format == "JPEG":
                img.draft("RGB", (draft_side, draft_side))  # decode big JPEGs at a reduced scale
            img.load()
            return _to_rgb(img)
    except FileNotFoundError as exc:
        raise DataError(f"image {path} not found") from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot decode image {path}: {exc}") from exc


def _centre_box(width: int, height: int, crop: float) -> tuple[float, float, float, float]:
    side = crop * min(width, height)
    return ((width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2)


def _disk_centre(start: int, end: int, length: int, diameter: int, slack: int) -> float:
    """Centre along one axis of a disk of ``diameter`` seen from ``start`` to ``end`` of ``[0, length)``.

    ``slack``: how much shorter than the diameter a whole disk may measure (the mask's resolution).
    """
    whole = end - start >= diameter - slack
    if whole or (start == 0) == (end == length):
        return (start + end) / 2  # whole, or cut alike on both sides (the camera's field stop)
    return end - diameter / 2 if start == 0 else start + diameter / 2  # cut by one edge of the photo


def _disk_span(profile: np.ndarray) -> tuple[int, int] | None:
    """[start, end) of the rows (or columns) of the disk: the unbroken run around the fullest one.

    A row counts if it holds over 5% of the fullest row's disk pixels (a disk's chord is that
    short only within 0.2% of its radius of the rim); specks apart from the disk are left out.
    """
    peak = int(profile.argmax())
    if profile[peak] == 0:
        return None
    gaps = np.flatnonzero(profile <= 0.05 * profile[peak])
    before, after = gaps[gaps < peak], gaps[gaps > peak]
    return (int(before[-1]) + 1 if len(before) else 0), (int(after[0]) if len(after) else len(profile))


def fundus_box(img: Image.Image) -> tuple[int, int, int, int]:
    """The square (left, top, right, bottom) around the retina disk; it may reach outside the photo.

    The disk is where the brightest channel exceeds FUNDUS_THRESHOLD on a copy reduced to about
    FUNDUS_MASK_SIDE pixels (box-averaged) and median-filtered, so JPEG noise does not count, nor
    do specks apart from the disk (``_disk_span``). Its diameter is the longer extent; along an
    axis where one edge of the photo cuts the disk, the centre is measured from the uncut side.
    An image with no disk (all black) gives the whole photo padded to a square.
    """
    width, height = img.size
    factor = max(1, round(max(width, height) / FUNDUS_MASK_SIDE))
    small = np.asarray(img.reduce(factor) if factor > 1 else img).max(axis=2)
    disk = np.asarray(Image.fromarray(small).filter(ImageFilter.MedianFilter(3))) > FUNDUS_THRESHOLD
    rows, cols = _disk_span(disk.sum(axis=1)), _disk_span(disk.sum(axis=0))
    if rows is None or cols is None:
        side = max(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        return left, top, left + side, top + side
    # mask pixel i covers [i * factor, (i + 1) * factor) of the photo; the last one may be partial
    x0, x1 = cols[0] * factor, min(width, cols[1] * factor)
    y0, y1 = rows[0] * factor, min(height, rows[1] * factor)
    diameter = max(x1 - x0, y1 - y0)
    left = round(_disk_centre(x0, x1, width, diameter, 2 * factor) - diameter / 2)
    top = round(_disk_centre(y0, y1, height, diameter, 2 * factor) - diameter / 2)
    return left, top, left + diameter, top + diameter


def _fundus_square(img: Image.Image) -> Image.Image:
    """Crop to the square around the retina disk; what lies outside the photo becomes black."""
    return img.crop(fundus_box(img))  # PIL fills a box beyond the image with zeros


def load_image(path: Path, prep: Preprocess) -> np.ndarray:
    """Decode one file and apply the pixel part of ``prep``: RGB, crop, resize -> HxWx3 uint8.

    The one decoding path: the cache and the uncached dataset both call it.
    """
    size = prep.image_size
    img = _open_rgb(path, draft_side=math.ceil(2 * size / max(prep.crop, 0.1)))
    box = None
    if prep.mode == "fundus":
        img = _fundus_square(img)
    elif prep.crop < 1.0:
        box = _centre_box(img.width, img.height, prep.crop)
    elif img.width != img.height:
        box = _centre_box(img.width, img.height, 1.0)
    # BICUBIC in PIL widens its filter when shrinking, so the resize is antialiased
    img = img.resize((size, size), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0)
    return np.array(img, dtype=np.uint8)


def measure_crop(paths: Sequence[Path], sample: int = CROP_SAMPLE, threshold: int = CELL_THRESHOLD,
                 margin: float = CROP_MARGIN) -> float:
    """Smallest centred square (fraction of the shorter side) that keeps every sampled cell whole."""
    chosen = sorted({round(i) for i in np.linspace(0, len(paths) - 1, min(sample, len(paths)))})
    needed = 0.0
    for i in chosen:
        pixels = np.asarray(_open_rgb(paths[i]))
        height, width = pixels.shape[:2]
        cell = pixels.max(axis=2) > threshold
        rows, cols = np.flatnonzero(cell.any(axis=1)), np.flatnonzero(cell.any(axis=0))
        if not len(rows):
            continue  # an all-black image constrains nothing
        # pixel i covers [i, i + 1); the square is centred on (width / 2, height / 2)
        half = max(width / 2 - cols[0], cols[-1] + 1 - width / 2, height / 2 - rows[0], rows[-1] + 1 - height / 2)
        needed = max(needed, 2 * half / min(width, height))
    if needed == 0.0:
        return 1.0
    return min(1.0, math.ceil((needed + margin) * 1000) / 1000)


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
        record = Path(cache_dir) / f"preprocess-{train.name}-{_digest(settings)}.json"
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
        _write_atomically(record, json.dumps(prep.to_dict(), indent=1).encode())
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


# ------------------------------------------------------------------ dataset + cache


def _digest(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _fill_cache(array_path: Path, start: int, paths: Sequence[Path], prep: Preprocess) -> int:
    """Decode ``paths`` into rows ``start...`` of the .npy at ``array_path`` (runs in a worker)."""
    array = np.load(array_path, mmap_mode="r+")
    for offset, path in enumerate(paths):
        array[start + offset] = load_image(path, prep)
    array.flush()
    return len(paths)


def build_cache(paths: Sequence[Path], prep: Preprocess, target: Path, workers: int | None = None,
                desc: str = "caching") -> None:
    """Decode every file into an N x H x W x 3 uint8 .npy at ``target``, atomically.

    Worker processes each fill their slice of a memory-mapped temporary file, which is renamed
    to ``target`` only once complete: a crash never leaves a half cache that looks finished.
    """
    size = prep.image_size
    workers = min(workers or os.cpu_count() or 1, 8, math.ceil(len(paths) / _CHUNK))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp.npy")
    np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), size, size, 3)).flush()
    chunks = [(start, list(paths[start:start + _CHUNK])) for start in range(0, len(paths), _CHUNK)]
    try:
        with tqdm(total=len(paths), desc=desc, unit="img") as bar:
            if workers <= 1:
                for start, part in chunks:
                    bar.update(_fill_cache(tmp, start, part, prep))
            else:
                context = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
                with ProcessPoolExecutor(workers, mp_context=context) as pool:
                    futures = [pool.submit(_fill_cache, tmp, start, part, prep) for start, part in chunks]
                    try:
                        for future in as_completed(futures):
                            bar.update(future.result())
                    except BaseException:
                        pool.shutdown(wait=True, cancel_futures=True)
                        raise
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


class ImageDataset(Dataset):
    """Preprocessed images as uint8 3xHxW tensors, read from a memory-mapped cache when given.

    With ``cache_dir`` the split is decoded once (in ``build_workers`` processes) into
    ``cache_dir/pixels-<size>px-<key>.npy``; the key covers the file list, each file's size and
    mtime, and the pixel settings of ``prep``, so a changed data set or size builds a new one.
    Without it every access decodes the file with the same ``load_image``.
    """

    def __init__(self, split: Split, prep: Preprocess, cache_dir: Path | None = None,
                 build_workers: int | None = None) -> None:
        self.split = split
        self.prep = prep
        labels = split.labels if split.labels is not None else (UNLABELLED,) * len(split.paths)
        self.labels = torch.tensor(labels, dtype=torch.int64)
        self.cache_path: Path | None = None
        self._array: np.ndarray | None = None
        if cache_dir is not None:
            key = _digest({"version": CACHE_VERSION, "files": split.fingerprint(), **prep.pixel_key()})
            self.cache_path = Path(cache_dir) / f"pixels-{prep.image_size}px-{key}.npy"
            if not self._cache_is_valid():
                build_cache(split.paths, prep, self.cache_path, build_workers,
                            desc=f"caching {split.name} ({len(split)} images)")

    def _cache_is_valid(self) -> bool:
        if not self.cache_path.is_file():
            return False
        try:
            array = np.load(self.cache_path, mmap_mode="r")
        except (OSError, ValueError):
            return False
        size = self.prep.image_size
        return array.dtype == np.uint8 and array.shape == (len(self.split), size, size, 3)

    @property
    def pixels(self) -> np.ndarray | None:
        """The N x H x W x 3 uint8 memory map (opened lazily, once per process), None uncached."""
        if self._array is None and self.cache_path is not None:
            self._array = np.load(self.cache_path, mmap_mode="r")
        return self._array

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_array"] = None  # each worker process maps the file itself
        return state

    def __len__(self) -> int:
        return len(self.split.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self.pixels is not None:
            image = np.array(self.pixels[index])
        else:
            image = load_image(self.split.paths[index], self.prep)
        return torch.from_numpy(image).permute(2, 0, 1), int(self.labels[index])

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch (uint8 Nx3xHxW, a channels-last view of the cache's NHWC, int64 N) in the given order."""
        wanted = np.asarray(indices, dtype=np.int64)
        if self.pixels is not None:
            order = np.argsort(wanted, kind="stable")
            images = np.empty((len(wanted), *self.pixels.shape[1:]), dtype=np.uint8)
            images[order] = self.pixels[wanted[order]]  # one read, in file order
        else:
            images = np.stack([load_image(self.split.paths[i], self.prep) for i in wanted])
        return torch.from_numpy(images).permute(0, 3, 1, 2), self.labels[torch.from_numpy(wanted)]


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


# ------------------------------------------------------------------ class imbalance


def class_weights(labels: Sequence[int] | np.ndarray | torch.Tensor, kind: str,
                  num_classes: int | None = None) -> torch.Tensor:
    """Per-class loss weights against class imbalance (float32, one per class), e.g. for CrossEntropyLoss.

    With n_c the number of labels of class c, N = sum_c n_c, and C the number of classes that
    occur (n_c > 0)::

        "none"     w_c = 1
        "inverse"  w_c = N / (C * n_c)                      (scikit-learn's "balanced")
        "sqrt"     w_c = N / (sqrt(n_c) * sum_k sqrt(n_k))   (proportional to 1 / sqrt(n_c))

    Both weightings have mean 1 over the samples (sum_c n_c w_c / N = 1), so the loss keeps its
    scale. A class with no labels gets w_c = 0 (it is never a target; no division by zero).
    ``num_classes`` defaults to max(labels) + 1; pass it when the last classes may be absent.
    """
    if kind not in CLASS_WEIGHTINGS:
        raise ValueError(f"unknown class weighting {kind!r}; choices: {', '.join(CLASS_WEIGHTINGS)}")
    values = torch.as_tensor(labels).to(torch.int64).flatten()
    if len(values) and int(values.min()) < 0:
        raise ValueError("class_weights needs labels >= 0 (is the split unlabelled?)")
    classes = num_classes if num_classes is not None else int(values.max()) + 1 if len(values) else 0
    if len(values) and int(values.max()) >= classes:
        raise ValueError(f"label {int(values.max())} is not below num_classes={classes}")
    if kind == "none":
        return torch.ones(classes)
    counts = torch.bincount(values, minlength=classes).double()
    present = counts[counts > 0]
    power = 1.0 if kind == "inverse" else 0.5  # w_c = N / (n_c^p * sum_k n_k^(1 - p)): mean 1 over samples
    weights = torch.zeros(classes, dtype=torch.float64)
    weights[counts > 0] = len(values) / (present ** power * (present ** (1 - power)).sum())
    return weights.float()


def _balancing_weights(labels: torch.Tensor) -> torch.Tensor:
    """Per-sample draw weights 1 / n_(its class): every class is drawn equally often on average."""
    if len(labels) and int(labels.min()) < 0:
        raise ValueError("balanced sampling needs labels; this split is unlabelled")
    counts = torch.bincount(labels).double()
    return 1.0 / counts[labels]


# --------------------------------------------------------------------------- loader


class ShardedBatchSampler(Sampler[list[int]]):
    """Batches of indices for one rank; the order is a pure function of (seed, epoch).

    Training (``shuffle``) pads the permutation by wrapping so every rank gets the same number
    of batches (like DistributedSampler); evaluation gives each rank a contiguous block, every
    index exactly once across ranks. With ``weights`` (training only) an epoch is instead as many
    draws with replacement, index i with probability proportional to weights[i], dealt out to
    the ranks like the permutation: each draw goes to exactly one rank.
    """

    def __init__(self, size: int, batch_size: int, shuffle: bool, seed: int = 0, drop_last: bool = False,
                 rank: int = 0, world_size: int = 1, weights: torch.Tensor | None = None) -> None:
        if batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need batch_size >= 1 and 0 <= rank < world_size, got {batch_size}, {rank}, {world_size}")
        if weights is not None and (not shuffle or len(weights) != size):
            raise ValueError(f"weighted sampling needs shuffle=True and one weight per item ({size}), "
                             f"got shuffle={shuffle} and {len(weights)} weights")
        self.size, self.batch_size, self.shuffle, self.seed = size, batch_size, shuffle, seed
        self.drop_last, self.rank, self.world_size = drop_last, rank, world_size
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def indices(self) -> list[int]:
        """This rank's indices for the current epoch, in order."""
        if not self.shuffle:
            return list(range(self.rank * self.size // self.world_size, (self.rank + 1) * self.size // self.world_size))
        seed = int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0])  # mixes both, no collisions
        generator = torch.Generator().manual_seed(seed)
        padded = math.ceil(self.size / self.world_size) * self.world_size
        if self.weights is not None:
            if padded == 0:
                return []
            order = torch.multinomial(self.weights, padded, replacement=True, generator=generator).tolist()
        else:
            order = torch.randperm(self.size, generator=generator).tolist()
            order = (order * math.ceil(padded / max(self.size, 1)))[:padded]
        return order[self.rank::self.world_size]

    def __len__(self) -> int:
        if self.shuffle:
            per_rank = math.ceil(self.size / self.world_size)
        else:
            per_rank = (self.rank + 1) * self.size // self.world_size - self.rank * self.size // self.world_size
        return per_rank // self.batch_size if self.drop_last else math.ceil(per_rank / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        mine = self.indices()
        for number in range(self.start_batch, len(self)):
            yield mine[number * self.batch_size:(number + 1) * self.batch_size]


def _as_is(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return batch  # __getitems__ already returns a collated batch


class BatchLoader:
    """Iterable of (uint8 Nx3xHxW, int64 N) batches; ``set_epoch`` fixes the shuffle order."""

    def __init__(self, dataset: ImageDataset, sampler: ShardedBatchSampler, workers: int = 0,
                 pin_memory: bool = False) -> None:
        self.dataset = dataset
        self.sampler = sampler
        # Its own generator: creating an iterator must not draw from the global RNG, or a run
        # resumed mid-epoch would augment differently from an uninterrupted one.
        self._loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=_as_is, num_workers=workers,
                                  pin_memory=pin_memory, persistent_workers=workers > 0,
                                  generator=torch.Generator())

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Order batches for ``epoch``; the next pass skips its first ``start_batch`` batches (resume)."""
        self.sampler.set_epoch(epoch, start_batch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        try:
            yield from self._loader
        except DataError as exc:  # from a worker process: the message carries the worker's traceback
            last = str(exc).strip().splitlines()[-1]
            raise DataError(re.sub(r"^[\w.]*DataError: ", "", last)) from None


def make_loader(dataset: ImageDataset, batch_size: int, shuffle: bool, seed: int = 0,
                workers: int = 0, pin_memory: bool = False, drop_last: bool = False,
                rank: int = 0, world_size: int = 1, balanced: bool = False) -> BatchLoader:
    """Batches of ``dataset`` for one rank; each batch is one ``__getitems__`` read.

    ``balanced`` (training, needs ``shuffle``): each epoch draws its indices with replacement,
    image i with probability proportional to 1 / n_(class of i), so that every class is seen
    about equally often; still a pure function of (seed, epoch), with as many batches per epoch
    as without balancing. Rare images repeat within an epoch and common ones are skipped.
    """
    weights = _balancing_weights(dataset.labels) if balanced else None
    sampler = ShardedBatchSampler(len(dataset), batch_size, shuffle, seed, drop_last, rank, world_size, weights)
    return BatchLoader(dataset, sampler, workers, pin_memory)


# ------------------------------------------------------------------ on the device


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


# RGB -> YIQ; hue is a rotation of the (I, Q) plane and saturation scales it
_RGB_TO_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


class BatchTransform(torch.nn.Module):
    """uint8 batch on the device -> normalised float batch; random per-sample augmentation if ``train``.

    Training draws, per sample, from the global torch RNG: flips, a rotation by any angle, a
    scale and a shift (one affine warp, zeros = black outside), then brightness, contrast,
    saturation and hue (one 3x3 colour matrix plus an offset). Without host syncs. Colour
    strengths left as None come from COLOUR_JITTER for ``prep.mode``: milder for fundus photos.
    """

    def __init__(self, prep: Preprocess, train: bool, scale: tuple[float, float] = (0.9, 1.1),
                 translate: float = 0.05, brightness: float | None = None, contrast: float | None = None,
                 saturation: float | None = None, hue: float | None = None) -> None:
        super().__init__()
        self.augment = train
        self.scale, self.translate = scale, translate
        given = (brightness, contrast, saturation, hue)
        defaults = COLOUR_JITTER.get(prep.mode, COLOUR_JITTER["center"])
        self.brightness, self.contrast, self.saturation, self.hue = (
            default if value is None else value for value, default in zip(given, defaults))
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
        angle = torch.rand(n, device=device) * (2 * math.pi)
        flips = torch.randint(0, 2, (n, 2), device=device).float() * 2 - 1
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
