"""Evaluation figures: ROC + precision-recall with the operating point, one-vs-rest ROC, reliability."""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve  # noqa: E402

from core.evaluation.metrics import wrap_title  # noqa: E402


def save_curves_png(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str], op: dict[str, Any] | None,
                    title: str, path: Path) -> bool:
    """Two classes: ROC and precision-recall side by side, operating point ``op`` marked.
    More classes: one-vs-rest ROC per class. False (nothing written) if the labels hold one class."""
    if len(np.unique(labels)) < 2:
        return False
    if probs.shape[1] == 2:
        fig, (roc_ax, pr_ax) = plt.subplots(1, 2, figsize=(10, 4.6), layout="constrained")
        _roc(roc_ax, labels == 1, probs[:, 1], f"{classes[1]} vs {classes[0]}")
        _precision_recall(pr_ax, labels == 1, probs[:, 1], classes[1])
        if op is not None and op["sensitivity"] is not None and op["specificity"] is not None:
            point = f"threshold {op['threshold']:.3g}"
            roc_ax.plot(1 - op["specificity"], op["sensitivity"], "o", color="tab:red", label=point)
            if op["ppv"] is not None:
                pr_ax.plot(op["sensitivity"], op["ppv"], "o", color="tab:red", label=point)
        roc_ax.legend(loc="lower right", fontsize=8)
        pr_ax.legend(loc="lower left", fontsize=8)
    else:
        fig, roc_ax = plt.subplots(figsize=(5.6, 4.8), layout="constrained")
        for i, name in enumerate(classes):
            if 0 < (labels == i).sum() < len(labels):
                _roc(roc_ax, labels == i, probs[:, i], f"{name} vs rest")
        roc_ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(textwrap.fill(title, int(fig.get_figwidth() * 72 / (0.6 * 11))), fontsize=11)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return True


def _roc(ax: plt.Axes, positive: np.ndarray, scores: np.ndarray, label: str) -> None:
    fpr, tpr, _ = roc_curve(positive, scores)
    ax.plot(fpr, tpr, label=f"{label} (AUC {auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey", linewidth=1)
    ax.set(xlabel="1 - specificity (false positive rate)", ylabel="sensitivity (true positive rate)",
           xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), title="ROC")
    ax.grid(alpha=0.3)


def _precision_recall(ax: plt.Axes, positive: np.ndarray, scores: np.ndarray, name: str) -> None:
    precision, recall, _ = precision_recall_curve(positive, scores)
    ax.plot(recall, precision, label=f"{name} (AP {average_precision_score(positive, scores):.3f})")
    ax.axhline(positive.mean(), linestyle=":", color="grey", linewidth=1)  # a classifier that guesses
    ax.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", xlim=(-0.01, 1.01), ylim=(-0.01, 1.01),
           title="Precision-recall")
    ax.grid(alpha=0.3)


def save_reliability_png(bins: dict[str, list[float]], ece: float, title: str, path: Path,
                         images: int | None = None) -> None:
    """Accuracy against mean confidence per bin, each bin a dot whose area is its share of the ``images``
    (count written beside it), so that a bin of one or two images cannot dominate; the diagonal, the ECE,
    and grey bars for the share of images."""
    fig, ax = plt.subplots(figsize=(5, 4.6), layout="constrained")
    ax.plot([0, 1], [0, 1], ":", color="grey", linewidth=1, label="perfectly calibrated")
    share = np.asarray(bins["share"], dtype=float)
    ax.plot(bins["confidence"], bins["accuracy"], "-", color="tab:blue", linewidth=0.8, alpha=0.4)
    ax.scatter(bins["confidence"], bins["accuracy"], s=12 + 400 * share, color="tab:blue", alpha=0.8, zorder=3,
               label=f"model (ECE {ece:.3f}); dot area: images in the bin")
    if images:
        for x, y, part in zip(bins["confidence"], bins["accuracy"], share):
            ax.annotate(f"{round(part * images)}", (x, y), textcoords="offset points", xytext=(6, -10), fontsize=7,
                        color="tab:blue")
    for x, part in zip(bins["confidence"], share):
        ax.bar(x, part, width=0.04, color="tab:grey", alpha=0.35)  # how many images each bin holds
    ax.set(xlabel="confidence (top-class probability)", ylabel="accuracy; bars: share of images",
           xlim=(0, 1.01), ylim=(0, 1.05))
    ax.set_title(wrap_title(title, ax, 10), fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=130)
    plt.close(fig)
