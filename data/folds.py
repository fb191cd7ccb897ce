"""k-fold cross-validation folds over the pooled train+valid images, stratified and grouped by patient.

    table = assign_folds(source, k, seed)       # one row per pooled image: path, id, label, patient, fold
    fold_source(source, table, 2)               # DataSource whose valid is fold 2 and train the others

Patients never straddle two folds where the layout names them (Kaggle C-NMC cells, Kaggle-style
retina names ``10_left``); elsewhere each image is its own group. With ``split="fold"`` on the
Kaggle C-NMC layout the data set's own fold_0..fold_N folders are the folds.
"""
from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from data.patients import patient_ids
from data.sources import DataError, DataSource, make_split

FOLD_COLUMNS = ("path", "id", "label", "patient", "fold")


def pooled(source: DataSource) -> pd.DataFrame:
    """train + valid as one table (path, id, label, patient); patient is "" where unknown."""
    rows = [(str(p), i, lab) for name in ("train", "valid") for p, i, lab in
            zip(source.splits[name].paths, source.splits[name].ids, source.splits[name].labels or ())]
    table = pd.DataFrame(rows, columns=["path", "id", "label"])
    ids = patient_ids(table["path"])
    table["patient"] = [str(p) for p in ids] if ids is not None else ""
    return table


def assign_folds(source: DataSource, k: int, seed: int, split: str = "patient") -> pd.DataFrame:
    """The pooled images with a fold number 0..k-1 each (columns FOLD_COLUMNS); DataError if impossible."""
    table = pooled(source)
    if split == "fold" and source.layout == "kaggle":
        table["fold"] = _own_folds(table, k)
        return table[list(FOLD_COLUMNS)]
    known = (table["patient"] != "").all()
    groups = table["patient"] if known else pd.Series(np.arange(len(table)).astype(str))
    if groups.nunique() < k:
        unit = "patients" if known else "images"
        raise DataError(f"--folds {k} needs at least {k} {unit}; the data has {groups.nunique()}")
    table["fold"] = -1
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # a class rarer than k is allowed; its images just miss some folds
        warnings.simplefilter("ignore", UserWarning)
        for fold, (_, valid) in enumerate(splitter.split(table["path"], table["label"], groups)):
            table.loc[valid, "fold"] = fold
    return table[list(FOLD_COLUMNS)]


def _own_folds(table: pd.DataFrame, k: int) -> list[int]:
    """Kaggle C-NMC: training_data/fold_<n>/<class>/<image> -> the index of fold_<n> among the folders."""
    names = [Path(p).parent.parent.name for p in table["path"]]
    order = sorted(set(names))
    if len(order) != k:
        raise DataError(f"--split fold uses the data set's own {len(order)} folds ({', '.join(order)}); "
                        f"pass --folds {len(order)} or use --split patient")
    return [order.index(n) for n in names]


def fold_source(source: DataSource, table: pd.DataFrame, fold: int) -> DataSource:
    """``source`` with train = every fold but ``fold`` and valid = ``fold``; test splits unchanged."""
    splits = dict(source.splits)
    where = str(source.root)
    for name, rows in (("train", table[table["fold"] != fold]), ("valid", table[table["fold"] == fold])):
        splits[name] = make_split(name, [Path(p) for p in rows["path"]], rows["label"].tolist(),
                                  rows["id"].tolist(), f"{where} (fold {fold} of {table['fold'].max() + 1})")
    k = int(table["fold"].max()) + 1
    note = f"fold {fold} of {k}: {len(splits['train'])} train / {len(splits['valid'])} valid images"
    return replace(source, splits=splits, note=note)


def read_folds(path: Path) -> pd.DataFrame:
    """folds.csv as written by ``assign_folds``; DataError if damaged."""
    try:
        table = pd.read_csv(path, dtype={"path": str, "id": str, "patient": str}, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the fold assignment ({exc.__class__.__name__})") from None
    missing = [c for c in FOLD_COLUMNS if c not in table.columns]
    if missing or not len(table):
        raise DataError(f"{path}: not a fold assignment (needs columns {', '.join(FOLD_COLUMNS)})")
    return table


def describe_folds(table: pd.DataFrame) -> str:
    """One line: images, patients and the share of each class per fold."""
    known = (table["patient"] != "").all()
    parts = []
    for fold, rows in table.groupby("fold"):
        shares = rows["label"].value_counts(normalize=True).sort_index()
        mix = "/".join(f"{v:.0%}" for v in shares)
        parts.append(f"fold {fold}: {len(rows)} images"
                     + (f", {rows['patient'].nunique()} patients" if known else "") + f", classes {mix}")
    return "; ".join(parts)
