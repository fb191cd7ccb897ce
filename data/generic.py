"""Generic layouts: a CSV of path,label or one folder per class."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from data.sources import (
    LAYOUT_NEEDS,
    DataError,
    DataSource,
    Split,
    class_folders,
    column,
    images_in,
    make_split,
    read_csv,
    resolve_path,
    stratified_split,
)


def find_label_csv(root: Path) -> Path | None:
    if (root / "labels.csv").is_file():
        return root / "labels.csv"
    for csv in sorted(root.glob("*.csv")):
        header = {str(c).strip().lower() for c in read_csv(csv).columns}
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


def open_csv(root: Path, method: str, valid_fraction: float, seed: int) -> DataSource:
    csv = find_label_csv(root)
    if csv is None:
        raise DataError(f"csv layout needs {root}/{LAYOUT_NEEDS['csv']}")
    frame = read_csv(csv)
    path_col, label_col = column(frame, csv, ["path", "label"])
    ids = frame[path_col].tolist()
    paths = [resolve_path(w, csv, line, [csv.parent, csv.parent.parent])
             for line, w in enumerate(ids, start=2)]
    classes, labels = _class_names(frame[label_col].tolist(), csv)
    splits, note = _split_labelled(paths, labels, ids, str(csv), method, valid_fraction, seed)
    return DataSource(root, "csv", "generic", classes, splits, note)


def _split_labelled(paths: list[Path], labels: list[int], ids: list[str], source: str, method: str,
                    valid_fraction: float, seed: int) -> tuple[dict[str, Split], str]:
    """train/valid by a stratified seeded image-level split (no patient ids outside Kaggle)."""
    train, valid = stratified_split(labels, valid_fraction, seed)
    splits = {name: make_split(name, [paths[i] for i in idx], [labels[i] for i in idx],
                                [ids[i] for i in idx], source)
              for name, idx in (("train", train), ("valid", valid))}
    why = " (no patient ids in this layout)" if method == "patient" else ""
    note = f"stratified random image-level split (seed {seed}){why}: {len(train)} train / {len(valid)} valid"
    return splits, note


def open_folders(root: Path, method: str, valid_fraction: float, seed: int) -> DataSource:
    classes = tuple(d.name for d in class_folders(root / "train"))
    if classes:
        splits = {}
        for name in ("train", "valid"):
            folder = root / name
            if name == "valid" and not folder.is_dir() and (root / "val").is_dir():
                folder = root / "val"
            splits[name] = _folder_split(name, root, folder, classes)
        test = root / "test"
        if test.is_dir():
            if class_folders(test):
                splits["test"] = _folder_split("test", root, test, classes)
            else:
                found = images_in(test)
                splits["test"] = make_split("test", found, None,
                                             [p.relative_to(root).as_posix() for p in found], str(test))
        note = f"folders layout: {', '.join(f'{n} {len(s)}' for n, s in splits.items())}"
        return DataSource(root, "folders", "generic", classes, splits, note)
    folders = class_folders(root)
    if len(folders) < 2:
        raise DataError(f"folders layout needs {root}/{LAYOUT_NEEDS['folders']}")
    classes = tuple(d.name for d in folders)
    paths, labels = [], []
    for label, folder in enumerate(folders):
        found = images_in(folder)
        paths += found
        labels += [label] * len(found)
    ids = [p.relative_to(root).as_posix() for p in paths]
    splits, note = _split_labelled(paths, labels, ids, str(root), method, valid_fraction, seed)
    return DataSource(root, "folders", "generic", classes, splits, note)


def _folder_split(name: str, root: Path, folder: Path, classes: tuple[str, ...]) -> Split:
    paths, labels = [], []
    for class_dir in class_folders(folder):
        if class_dir.name not in classes:
            raise DataError(f"{class_dir} is not one of the classes in {root / 'train'}: {', '.join(classes)}")
        found = images_in(class_dir)
        paths += found
        labels += [classes.index(class_dir.name)] * len(found)
    return make_split(name, paths, labels, [p.relative_to(root).as_posix() for p in paths], str(folder))
