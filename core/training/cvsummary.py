"""The numbers of a cross-validation run: each fold's best and last valid epoch, their mean and standard deviation.

    cv_summary.csv   fold,best_epoch,epochs,valid_acc,valid_loss,train_acc,train_loss,last_valid_acc,last_valid_loss
                     (rows 0..K-1, mean, std; valid_* at the best epoch, last_valid_* at the final one)
    cv_summary.json  {"folds": [...], "mean": {...}, "std": {...}, "k": K, "finished": n}

The best epoch of a fold is chosen on that same fold, so its scores are optimistic; the last epoch's
are not, and the run's headline is the out-of-fold metrics (core/evaluation/oof.py, oof_metrics.json).
The standard deviation is the sample one (ddof=1), the spread a paper reports over folds.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from core.runs import OOF_METRICS, fold_dirs, read_history, write_json, write_text_atomic

BEST_METRICS = ("valid_acc", "valid_loss", "train_acc", "train_loss")
LAST_METRICS = ("last_valid_acc", "last_valid_loss")
METRICS = (*BEST_METRICS, *LAST_METRICS)


def fold_rows(cv_dir: Path) -> pd.DataFrame:
    """One row per fold with a finished epoch: the metrics of its best valid-accuracy epoch and of its last."""
    rows = []
    for folder in fold_dirs(cv_dir):
        if not (folder / "history.csv").is_file():
            continue
        h = read_history(folder)
        if not len(h):
            continue
        best = h["valid_acc"].idxmax()  # the first of equal bests, as best.pt keeps it
        rows.append({"fold": int(folder.name.removeprefix("fold_")), "best_epoch": int(h["epoch"][best]),
                     "epochs": len(h), **{m: float(h[m][best]) for m in BEST_METRICS},
                     **{m: float(h[m.removeprefix("last_")].iloc[-1]) for m in LAST_METRICS}})
    return pd.DataFrame(rows, columns=["fold", "best_epoch", "epochs", *METRICS])


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    """The fold rows followed by a "mean" and a "std" row (sample std; NaN with one fold)."""
    numbers = rows[list(METRICS)]
    stats = pd.DataFrame([{"fold": "mean", **numbers.mean().to_dict()}, {"fold": "std", **numbers.std().to_dict()}])
    return pd.concat([rows, stats], ignore_index=True)[list(rows.columns)]


def write_summary(cv_dir: Path, k: int) -> pd.DataFrame:
    """Write cv_summary.csv and cv_summary.json from the folds' histories; returns the table."""
    rows = fold_rows(cv_dir)
    table = summarise(rows)
    write_text_atomic(cv_dir / "cv_summary.csv", table.to_csv(index=False))
    records = rows.to_dict(orient="records")
    stats = {name: {m: _number(table.loc[table["fold"] == name, m].iloc[0]) for m in METRICS}
             for name in ("mean", "std")}
    write_json(cv_dir / "cv_summary.json", {"k": k, "finished": len(rows), "folds": records, **stats,
                                            "std_kind": "sample (ddof=1)"})
    return table


def _number(value: float) -> float | None:
    return None if pd.isna(value) else float(value)


def format_table(table: pd.DataFrame) -> str:
    """The summary as aligned text: accuracies in percent, losses with 4 decimals."""
    return pd.DataFrame(_text_rows(table), columns=list(table.columns)).to_string(index=False)


def report_table(cv_dir: Path) -> tuple[list[str], list[list[str]]]:
    """The summary as (headers, rows of text) for the report, from the folds' histories."""
    headers = ["Fold", "Best epoch", "Epochs", "Valid acc (best)", "Valid loss (best)", "Train acc", "Train loss",
               "Valid acc (last)", "Valid loss (last)"]
    rows = [[c or "-" for c in row] for row in _text_rows(summarise(fold_rows(cv_dir)))]
    oof = read_oof_metrics(cv_dir)
    if oof is not None and isinstance(oof.get("accuracy"), dict):  # the headline: every image once, out of fold
        value, ci = oof["accuracy"].get("value"), oof["accuracy"].get("ci95")
        cell = f"{value:.2%}" + (f" [{ci[0] * 100:.2f}, {ci[1] * 100:.2f}]" if ci else "")
        rows.insert(0, ["out-of-fold", "-", "last", "-", "-", "-", "-", cell, "-"])
    return headers, rows


def read_oof_metrics(cv_dir: Path) -> dict | None:
    """oof_metrics.json of a CV run, or None (unfinished, or from before out-of-fold metrics were written)."""
    try:
        found = json.loads((cv_dir / OOF_METRICS).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return found if isinstance(found, dict) else None


def _text_rows(table: pd.DataFrame) -> list[list[str]]:
    def cell(column: str, value: object) -> str:
        if pd.isna(value):
            return ""
        if column in METRICS:
            return f"{value:.2%}" if column.endswith("acc") else f"{value:.4f}"
        return str(int(value)) if isinstance(value, float) else str(value)

    return [[cell(c, row[c]) for c in table.columns] for _, row in table.iterrows()]
