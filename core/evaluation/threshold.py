"""The operating point of a two-class model: which probability of the positive class calls it positive.

``--threshold youden`` (maximises sensitivity + specificity - 1), ``sens=0.95`` (the most specific
point that keeps sensitivity at least 0.95) or a number is chosen on the valid split, saved as
``operating_point.json`` beside the run's eval outputs with what it was chosen on (core.evaluation.fitted),
and applied to every split and the Kaggle CSV; later evaluations of the run read it back. Without
one the threshold is 0.5. The positive class is ``--positive-class`` (default: class index 1, the
second class of the checkpoint's class list: for 0/1 labels, 1).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from sklearn.metrics import roc_curve

from common.errors import UserError
from core.runs import read_saved, write_json

FILE = "operating_point.json"
DEFAULT = 0.5
DEFAULT_POSITIVE = 1  # the second class of the checkpoint's list; for numeric labels 0/1, label 1


@dataclass(frozen=True)
class OperatingPoint:
    """Two classes: call ``positive`` (a class index) where its probability is at least ``threshold``."""

    threshold: float
    positive: int = DEFAULT_POSITIVE
    source: str = ""  # where it came from (a file, a flag), for what predict.py prints


def check_rule(rule: str) -> str:
    """``youden``, ``sens=X`` (0 < X <= 1) or a number in [0, 1]; UserError otherwise."""
    sens = re.fullmatch(r"sens=([0-9.]+)", rule)
    try:
        value = float(sens[1]) if sens else None if rule == "youden" else float(rule)
    except ValueError:
        value = -1.0
    if rule != "youden" and (value is None or not 0 <= value <= 1 or (sens and value == 0)):
        raise UserError(f"--threshold {rule!r}: use youden, sens=0.95 (a sensitivity in (0, 1]) "
                        f"or a probability between 0 and 1")
    return rule


def choose_threshold(rule: str, labels: np.ndarray, positive_probs: np.ndarray) -> float:
    """The threshold ``rule`` picks on these (valid) labels and positive-class probabilities."""
    if rule != "youden" and not rule.startswith("sens="):
        return float(rule)
    if len(np.unique(labels)) < 2:
        raise UserError(f"--threshold {rule}: the valid split holds only one class, so sensitivity and "
                        f"specificity are undefined there; give a number instead")
    fpr, tpr, thresholds = roc_curve(labels, positive_probs, drop_intermediate=False)
    fpr, tpr, thresholds = fpr[1:], tpr[1:], thresholds[1:]  # the first point (threshold inf) calls nothing positive
    if rule == "youden":
        best = int(np.argmax(tpr - fpr))
    else:
        best = int(np.argmax(tpr >= float(rule.removeprefix("sens="))))  # tpr rises as the threshold falls
    return float(thresholds[best])


def decide(probs: np.ndarray, point: OperatingPoint | None) -> np.ndarray:
    """Class per row: two classes and an operating point, its positive class where that probability reaches
    the threshold, else the other; otherwise the arg-max."""
    if point is None or probs.shape[1] != 2:
        return probs.argmax(axis=1)
    return np.where(probs[:, point.positive] >= point.threshold, point.positive, 1 - point.positive).astype(np.int64)


def operating_point(labels: np.ndarray, preds: np.ndarray, threshold: float,
                    positive: int = DEFAULT_POSITIVE) -> dict[str, Any]:
    """Sensitivity, specificity, PPV and NPV of class ``positive`` at ``threshold`` (None where undefined)."""
    truth, called = labels == positive, preds == positive
    tp, fp = int((called & truth).sum()), int((called & ~truth).sum())
    tn, fn = int((~called & ~truth).sum()), int((~called & truth).sum())
    ratio = lambda a, b: a / (a + b) if a + b else None  # noqa: E731
    return {"threshold": threshold, "sensitivity": ratio(tp, fn), "specificity": ratio(tn, fp),
            "ppv": ratio(tp, fp), "npv": ratio(tn, fn), "tp": tp, "fp": fp, "tn": tn, "fn": fn}


def class_index(value: int | str, classes: Sequence[str], where: Path | str) -> int:
    """A class given by name (or index) -> its index; UserError naming the choices."""
    if isinstance(value, str) and value in classes:
        return list(classes).index(value)
    try:
        index = int(value)
    except (TypeError, ValueError):
        index = -1
    if not 0 <= index < len(classes):
        raise UserError(f"{where}: positive class {value!r} is not one of {', '.join(classes)} "
                        f"(or 0..{len(classes) - 1})")
    return index


def save(folder: Path, rule: str, threshold: float, positive_class: str, fitted_on: dict[str, Any]) -> None:
    """``fitted_on``: core.evaluation.fitted.provenance (checkpoints, TTA, temperature in force, split, data)."""
    write_json(folder / FILE, {"threshold": threshold, "rule": rule, "positive_class": positive_class,
                               "fitted_on": fitted_on})


def load(folder: Path) -> dict[str, Any] | None:
    """The saved operating point of a run, or None; UserError if the file is damaged."""
    return read_saved(folder / FILE, "threshold", lambda _: True, "choose one again with --threshold")
