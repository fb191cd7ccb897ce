"""Classification metrics and the confusion-matrix figure (scikit-learn + matplotlib)."""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    recall_score,
    roc_auc_score,
)


def classification_metrics(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str],
                           preds: np.ndarray | None = None) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1, weighted F1, macro recall, ROC-AUC or kappa.

    ``probs`` is N x C (softmax outputs); the prediction is ``preds`` if given (an operating
    threshold), else the arg-max.
    Weighted F1 is the C-NMC 2019 challenge metric; quadratic weighted kappa suits ordinal grades.
    """
    preds = probs.argmax(axis=1) if preds is None else preds
    ids = list(range(len(classes)))
    report = classification_report(labels, preds, labels=ids, target_names=list(classes),
                                   output_dict=True, zero_division=0)
    out: dict[str, Any] = {
        "images": int(len(labels)),
        "accuracy": float(accuracy_score(labels, preds)),
        "weighted_f1": float(f1_score(labels, preds, labels=ids, average="weighted", zero_division=0)),
        # over the classes present: an absent class has no recall (it is neither found nor missed)
        "macro_recall": float(recall_score(labels, preds, labels=sorted(set(labels.tolist())), average="macro",
                                           zero_division=0)),
        "per_class": {name: {k: float(report[name][k]) for k in ("precision", "recall", "f1-score", "support")}
                      for name in classes},
    }
    if len(classes) == 2:
        # AUC is undefined when only one class is present in the labels.
        out["roc_auc"] = float(roc_auc_score(labels, probs[:, 1])) if len(set(labels.tolist())) == 2 else None
    else:
        out["quadratic_kappa"] = float(cohen_kappa_score(labels, preds, labels=ids, weights="quadratic"))
    return out


def confusion(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Counts and row-normalised (per true class) confusion matrices."""
    counts = confusion_matrix(labels, preds, labels=list(range(num_classes)))
    return counts, normalise_rows(counts)


def normalise_rows(counts: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (the recall of each true class); empty rows stay 0."""
    rows = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, rows, out=np.zeros(counts.shape, dtype=float), where=rows > 0)


def draw_confusion(ax: plt.Axes, counts: np.ndarray, normalised: np.ndarray, classes: Sequence[str], title: str) -> None:
    """Row-normalised colours; each cell shows the share and the count."""
    ax.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
    ticks = range(len(classes))
    ax.set_xticks(ticks, labels=classes, rotation=30 if len(classes) > 2 else 0, ha="right" if len(classes) > 2 else "center")
    ax.set_yticks(ticks, labels=classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(wrap_title(title, ax, 10), fontsize=10)
    for i in ticks:
        for j in ticks:
            dark = normalised[i, j] > 0.5
            ax.text(j, i, f"{normalised[i, j]:.1%}\n({counts[i, j]})", ha="center", va="center",
                    fontsize=9 if len(classes) <= 3 else 7, color="white" if dark else "black")


def wrap_title(title: str, ax: plt.Axes, fontsize: float) -> str:
    """``title`` wrapped to the width of ``ax`` (long run and ensemble names would be clipped)."""
    inches = ax.get_position().width * ax.figure.get_figwidth()
    return textwrap.fill(title, max(16, int(inches * 72 / (0.6 * fontsize))))


def save_confusion_png(counts: np.ndarray, normalised: np.ndarray, classes: Sequence[str], title: str, path: Path) -> None:
    """One confusion matrix as a PNG (or PDF, from the suffix)."""
    size = 3.2 + 0.6 * len(classes)
    fig, ax = plt.subplots(figsize=(size, size * 0.9), layout="constrained")
    draw_confusion(ax, counts, normalised, classes, title)
    fig.savefig(path, dpi=130)
    plt.close(fig)
