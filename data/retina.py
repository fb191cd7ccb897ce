"""Retina photo layouts (diabetic retinopathy, grades 0-4): the retina lab's CSVs and Kaggle's DR download."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import pandas as pd

from data.sources import (
    DataError,
    DataSource,
    Split,
    column,
    images_in,
    int_label,
    make_split,
    read_csv,
    stratified_split,
)

RETINOPATHY_CLASSES = ("no DR", "mild", "moderate", "severe", "proliferative")
RETINA_EXTENSIONS = (".jpeg", ".jpg", ".png")  # tried in this order for a name listed without one
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
    return [int_label(v, csv, line, RETINOPATHY_CLASSES) for line, v in enumerate(values, start=first_line)]


def eye_patient(name: str) -> str | None:
    """The patient of a Kaggle-style retina name (10_left -> "10"); None if the name is not like that."""
    match = _EYE_NAME.fullmatch(name)
    return match[1] if match else None


def eye_patients(names: Sequence[str]) -> list[str] | None:
    """The patient id of each Kaggle-style name (10_left -> "10"); None if any name is not like that."""
    ids = [eye_patient(name) for name in names]
    return ids if all(i is not None for i in ids) else None


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
        train_p, valid_p = stratified_split([worst[p] for p in ids], valid_fraction, seed)
        valid_set = {ids[i] for i in valid_p}
        train = [i for i, p in enumerate(patients) if p not in valid_set]
        valid = [i for i, p in enumerate(patients) if p in valid_set]
        how = (f"patient-level split stratified by the worse eye (seed {seed}): {len(train_p)} patients train / "
               f"{len(valid_p)} valid, both eyes of a patient on the same side")
    else:
        train, valid = stratified_split(grades, valid_fraction, seed)
        why = " (the names carry no patient id)" if method == "patient" else ""
        how = f"stratified random image-level split (seed {seed}){why}"
    note = f"{how}; {len(train)} / {len(valid)} images"
    if patients is not None and method != "patient":
        shared = {patients[i] for i in train} & {patients[i] for i in valid}
        note += f"; {len(shared)} patients have an eye on each side (a leak that inflates validation scores)"
    return train, valid, note


def _retina_splits(paths: list[Path], grades: list[int], names: list[str], train: list[int], valid: list[int],
                   source: str) -> dict[str, Split]:
    return {name: make_split(name, [paths[i] for i in idx], [grades[i] for i in idx], [names[i] for i in idx], source)
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


def open_retina_lab(root: Path, method: str, valid_fraction: float, seed: int) -> DataSource:
    """The retinopathy lab: train_img/train_label (+ test_img/test_label); valid is a slice of train."""
    for name in ("train_img.csv", "train_label.csv"):
        if not (root / name).is_file():
            raise DataError(f"retina-lab layout needs {root / name} (one column, no header)")
    folders = [root / "images", root]
    index = _retina_index(folders)
    paths, grades, names = _read_retina_lab_list(root, "train", index, folders, labelled=True)
    if not names:
        raise DataError(f"split 'train' is empty ({root / 'train_img.csv'} lists no images)")
    eyes = [eye_patient(name) for name in names]
    matched = sum(e is not None for e in eyes)  # names without one: each image its own patient, said in the note
    patients = [e if e is not None else f"image {n}" for e, n in zip(eyes, names)] if matched else None
    train, valid, how = _retina_partition(grades, patients, method, valid_fraction, seed)
    if 0 < matched < len(names):
        how += (f" (warning: only {matched} of {len(names)} names carry a patient id like 10_left; "
                f"the other {len(names) - matched} are grouped by image)")
    splits = _retina_splits(paths, grades, names, train, valid, str(root / "train_img.csv"))
    test_img, test_label = root / "test_img.csv", root / "test_label.csv"
    if test_label.is_file() and not test_img.is_file():
        raise DataError(f"{test_label} has no {test_img.name} beside it to say which images it labels")
    if test_img.is_file():
        paths, grades, names = _read_retina_lab_list(root, "test", index, folders, labelled=test_label.is_file())
        splits["test"] = make_split("test", paths, grades, names, str(test_img))
    note = f"retina-lab layout: valid from train_img.csv by a {how}"
    if "test" in splits:
        note += f"; test {len(splits['test'])}{'' if splits['test'].labels else ' (unlabelled)'}"
    return DataSource(root, "retina-lab", "retinopathy", RETINOPATHY_CLASSES, splits, note)


def _read_image_level(csv: Path, folders: Sequence[Path]) -> tuple[list[Path], list[int], list[str]]:
    """A Kaggle image,level CSV (other columns, such as Usage, ignored): paths, grades, names."""
    frame = read_csv(csv)
    image_col, level_col = column(frame, csv, ["image", "level"])
    names = [name.strip() for name in frame[image_col]]
    paths = _retina_images(names, csv, 2, _retina_index(folders), folders)
    return paths, _grades(frame[level_col].tolist(), csv, 2), names


def open_retina_kaggle(root: Path, method: str, valid_fraction: float, seed: int) -> DataSource:
    """Kaggle's Diabetic Retinopathy Detection: trainLabels.csv + train/, optionally test/ (+ its labels)."""
    csv = root / "trainLabels.csv"
    if not csv.is_file():
        raise DataError(f"retina-kaggle layout needs {csv} (columns image,level)")
    paths, grades, names = _read_image_level(csv, [root / "train", root])
    if not names:
        raise DataError(f"split 'train' is empty ({csv} lists no images)")
    patients = eye_patients(names)
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
        splits["test"] = make_split("test", test_paths, test_grades, test_names, str(labels))
    elif test.is_dir():
        found = images_in(test)
        splits["test"] = make_split("test", found, None, [p.stem for p in found], str(test))
    note = f"retina-kaggle layout: {how}"
    if "test" in splits:
        note += f"; test {len(splits['test'])} " + (f"labelled by {labels.name}" if labels else "(unlabelled)")
    return DataSource(root, "retina-kaggle", "retinopathy", RETINOPATHY_CLASSES, splits, note)
