"""White blood cell layouts: the lab's CSV lists and the raw Kaggle C-NMC 2019 download."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from data.sources import (
    LAYOUT_NEEDS,
    DataError,
    DataSource,
    Split,
    absolute,
    column,
    images_in,
    int_label,
    make_split,
    read_csv,
    read_list,
    resolve_path,
    stratified_split,
)

LEUKEMIA_CLASSES = ("normal", "blast")  # 0 = hem (normal cell), 1 = all (leukemia blast)


def open_lab(root: Path) -> DataSource:
    # "./new_dataset/train/1.bmp" is written relative to root's parent. Never the working
    # directory: that could silently mix in another data set's file of the same name.
    bases = [root.parent, root]
    splits = {}
    for name in ("train", "valid"):
        csv = root / f"{name}.csv"
        if not csv.is_file():
            raise DataError(f"lab layout needs {csv} (columns Path,label)")
        paths, labels, ids = read_list(csv, True, LEUKEMIA_CLASSES, bases)
        splits[name] = make_split(name, paths, labels, ids, str(csv))
    known = _read_test_labels(root / "test_labels.csv", bases)
    skipped = []
    for csv in sorted(root.glob("*test*.csv")):
        if csv.name == "test_labels.csv":
            continue
        frame = read_csv(csv)
        if not any(str(c).strip().lower() == "path" for c in frame.columns):
            skipped.append(csv.name)
            continue
        paths, _, ids = read_list(csv, False, LEUKEMIA_CLASSES, bases)
        labels = None
        if known is not None:
            labels = [_test_label(known, written, path, csv, line) for line, (written, path)
                      in enumerate(zip(ids, paths), start=2)]
        splits[csv.stem] = make_split(csv.stem, paths, labels, ids, str(csv))
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
    paths, labels, ids = read_list(csv, True, LEUKEMIA_CLASSES, bases)
    known = {}
    for written, path, label in zip(ids, paths, labels):
        known[os.path.normpath(written.strip())] = label
        known[str(absolute(path))] = label
    return known


def _test_label(known: dict[str, int], written: str, path: Path, csv: Path, line: int) -> int:
    for key in (os.path.normpath(written.strip()), str(absolute(path))):
        if key in known:
            return known[key]
    raise DataError(f"{csv} line {line}: {written!r} has no label in test_labels.csv")


def kaggle_base(root: Path) -> Path | None:
    for base in (root / "C-NMC_Leukemia", root):
        if any((base / "training_data").glob("fold_*")):
            return base
    return None


def patient_id(path: Path) -> str:
    """The patient of a C-NMC cell image: UID_11_10_1_all.bmp -> "11"."""
    fields = path.stem.split("_")
    if len(fields) < 3:
        raise DataError(f"cannot read the patient id from {path} (expected names like UID_11_10_1_all.bmp)")
    return fields[1]


def open_kaggle(root: Path, method: str, valid_fraction: float, seed: int) -> DataSource:
    base = kaggle_base(root)
    if base is None:
        raise DataError(f"kaggle layout needs {root}/{LAYOUT_NEEDS['kaggle']}")
    paths, labels, folds = [], [], []
    for fold in sorted((base / "training_data").glob("fold_*")):
        for class_dir, label in (("hem", 0), ("all", 1)):
            found = images_in(fold / class_dir)
            paths += found
            labels += [label] * len(found)
            folds += [fold.name] * len(found)
    if not paths:
        raise DataError(f"no images in {base / 'training_data'}/fold_*/all|hem/")
    patients = [patient_id(p) for p in paths]
    train, valid, note = _kaggle_partition(labels, folds, patients, method, valid_fraction, seed)
    ids = [p.relative_to(base).as_posix() for p in paths]
    source = str(base / "training_data")
    splits = {name: make_split(name, [paths[i] for i in idx], [labels[i] for i in idx],
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
        train_p, valid_p = stratified_split([first_label[p] for p in ids], valid_fraction, seed)
        valid_set = {ids[i] for i in valid_p}
        train = [i for i, p in enumerate(patients) if p not in valid_set]
        valid = [i for i, p in enumerate(patients) if p in valid_set]
        how = f"patient-level split (seed {seed}): {len(train_p)} patients train / {len(valid_p)} valid"
    else:
        train, valid = stratified_split(labels, valid_fraction, seed)
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
            found = images_in(prelim)
            splits["test"] = make_split("test", found, None, [p.name for p in found], str(prelim))
        else:
            splits["test"] = _kaggle_prelim(prelim, csv)
    final = base / "testing_data" / "C-NMC_test_final_phase_data"
    if final.is_dir():
        found = images_in(final)
        splits["final_test"] = make_split("final_test", found, None, [p.name for p in found], str(final))
    return splits


def _kaggle_prelim(folder: Path, csv: Path) -> Split:
    frame = read_csv(csv)
    names_col, labels_col = column(frame, csv, ["new_names", "labels"])
    names = frame[names_col].tolist()
    lines = range(2, len(names) + 2)
    paths = [resolve_path(name, csv, line, [folder]) for name, line in zip(names, lines)]
    labels = [int_label(v, csv, line, LEUKEMIA_CLASSES) for v, line in zip(frame[labels_col], lines)]
    unlisted = sorted({p.name for p in images_in(folder)} - {p.name for p in paths})
    if unlisted:
        raise DataError(f"{folder / unlisted[0]} is not listed in {csv} ({len(unlisted)} images are not)")
    # Patient_ID holds each cell's original C-NMC name: kept, the test intervals resample patients.
    patients = next((frame[c].str.strip().tolist() for c in frame.columns if str(c).strip().lower() == "patient_id"),
                    None)
    return make_split("test", paths, labels, names, str(csv), patients)
