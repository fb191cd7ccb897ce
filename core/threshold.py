"""The operating point of a two-class model: which probability of the positive class calls it positive.

``--threshold youden`` (maximises sensitivity + specificity - 1), ``sens=0.95`` (the most specific
point that keeps sensitivity at least 0.95) or a number is chosen on the valid split, saved as
``operating_point.json`` beside the run's eval outputs, and applied to every split and the Kaggle
CSV; later evaluations of the run read it back. Without one the threshold is 0.5.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_curve

from core.errors import UserError
from core.runs import read_saved, write_json

FILE = "operating_point.json"
DEFAULT = 0.5


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


def predictions(probs: np.ndarray, threshold: float | None) -> np.ndarray:
    """Class per row: positive (1) when P(class 1) >= threshold for two classes, else the arg-max."""
    if threshold is None or probs.shape[1] != 2:
        return probs.argmax(axis=1)
    return (probs[:, 1] >= threshold).astype(np.int64)


def operating_point(labels: np.ndarray, preds: np.ndarray, threshold: float) -> dict[str, Any]:
    """Sensitivity, specificity, PPV and NPV of class 1 at ``threshold`` (None where undefined)."""
    tp = int(((preds == 1) & (labels == 1)).sum())
    fp = int(((preds == 1) & (labels == 0)).sum())
    tn = int(((preds == 0) & (labels == 0)).sum())
    fn = int(((preds == 0) & (labels == 1)).sum())
    ratio = lambda a, b: a / (a + b) if a + b else None  # noqa: E731
    return {"threshold": threshold, "sensitivity": ratio(tp, fn), "specificity": ratio(tn, fp),
            "ppv": ratio(tp, fp), "npv": ratio(tn, fn), "tp": tp, "fp": fp, "tn": tn, "fn": fn}


def save(folder: Path, rule: str, threshold: float, positive_class: str) -> None:
    write_json(folder / FILE, {"threshold": threshold, "rule": rule, "chosen_on": "valid",
                               "positive_class": positive_class})


def load(folder: Path) -> dict[str, Any] | None:
    """The saved operating point of a run, or None; UserError if the file is damaged."""
    return read_saved(folder / FILE, "threshold", lambda _: True, "choose one again with --threshold")
