"""Percentile-bootstrap 95% intervals, resampling patients (clusters) or images, class-stratified, vectorised.

Every resample is a row of draw counts: ``counts[b, k]`` = how often cluster k was drawn in
resample b. Clusters are drawn within their class (a patient's class is the highest label among
their images), as many as the class has, so every class of the data is in every resample and a
metric such as macro recall is never scored on a resample that lost a class. A resample where a
class is still missing (possible only when a patient's images carry different labels) or where
any metric is undefined is dropped for every metric alike. Each metric is then computed for all
resamples at once from weighted confusion matrices (accuracy, F1, recall, kappa) or weighted rank
sums (ROC-AUC); nothing loops per resample but the chunking that bounds memory.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

BLOCK = 1 << 19  # resamples x images per block: about 2 MB per float32 array, which stays in the CPU cache
BatchMetric = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class BootstrapPlan:
    """How to resample: ``resamples`` draws (0 = off), seeded; by cluster when ``clusters`` is given."""

    resamples: int = 2000
    seed: int = 0
    clusters: np.ndarray | None = None  # N cluster ids (patients), or None: every image its own cluster

    @property
    def unit(self) -> str:
        return "patients" if self.clusters is not None else "images"


def confusions(weights: np.ndarray, labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """B x C x C confusion matrices (rows true, columns predicted) of B weightings of the N images."""
    onehot = np.zeros((len(labels), num_classes * num_classes), np.float32)
    onehot[np.arange(len(labels)), labels * num_classes + preds] = 1
    return (weights @ onehot).reshape(len(weights), num_classes, num_classes)


def accuracy(cm: np.ndarray) -> np.ndarray:
    return np.trace(cm, axis1=1, axis2=2) / cm.sum(axis=(1, 2))


def macro_recall(cm: np.ndarray) -> np.ndarray:
    """Mean recall over the classes present in each resample (as core.evaluation.metrics scores the point estimate)."""
    support = cm.sum(axis=2)
    tp = np.diagonal(cm, axis1=1, axis2=2)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    return recall.sum(axis=1) / np.maximum((support > 0).sum(axis=1), 1)


def weighted_f1(cm: np.ndarray) -> np.ndarray:
    support = cm.sum(axis=2)
    tp = np.diagonal(cm, axis1=1, axis2=2)
    denominator = support + cm.sum(axis=1)  # 2tp + fn + fp
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    return (f1 * support).sum(axis=1) / support.sum(axis=1)


def quadratic_kappa(cm: np.ndarray) -> np.ndarray:
    """Cohen's kappa with quadratic weights, as scikit-learn's cohen_kappa_score(weights='quadratic')."""
    c = cm.shape[1]
    w = (np.arange(c)[:, None] - np.arange(c)[None, :]) ** 2 / max(c - 1, 1) ** 2
    total = cm.sum(axis=(1, 2))
    expected = cm.sum(axis=2)[:, :, None] * cm.sum(axis=1)[:, None, :] / total[:, None, None]
    observed_cost, expected_cost = (cm * w).sum(axis=(1, 2)), (expected * w).sum(axis=(1, 2))
    return 1 - np.divide(observed_cost, expected_cost, out=np.full_like(total, np.nan), where=expected_cost > 0)


def roc_auc(weights: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Weighted ROC-AUC of each row of ``weights`` (ties count one half); NaN where a class is absent."""
    positive = labels == 1
    neg_order = np.flatnonzero(~positive)[np.argsort(scores[~positive], kind="stable")]
    neg_scores = scores[neg_order]
    pos_scores = scores[positive]
    # cum[:, j] = weight of the j lowest-scoring negatives; a positive beats those strictly below it
    # and ties with those between its left and right insertion points.
    cum = np.zeros((len(weights), len(neg_order) + 1), weights.dtype)
    np.cumsum(weights[:, neg_order], axis=1, out=cum[:, 1:])
    below = cum[:, np.searchsorted(neg_scores, pos_scores, "left")]
    not_above = cum[:, np.searchsorted(neg_scores, pos_scores, "right")]
    w_pos = weights[:, positive]
    wins = np.einsum("bi,bi->b", w_pos, below + not_above, dtype=np.float64) / 2
    pairs = w_pos.sum(axis=1, dtype=np.float64) * cum[:, -1].astype(np.float64)
    return np.divide(wins, pairs, out=np.full(len(weights), np.nan), where=pairs > 0)


def draw_weights(plan: BootstrapPlan, labels: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """``size`` x N image weights: how often each image enters each resample (clusters drawn within their class)."""
    clusters = plan.clusters if plan.clusters is not None else np.arange(len(labels))
    ids, cluster_of_image = np.unique(clusters, return_inverse=True)
    k = len(ids)
    stratum = np.zeros(k, np.int64)
    np.maximum.at(stratum, cluster_of_image, labels)  # a patient's class: their highest label
    order = np.argsort(stratum, kind="stable")  # the clusters class by class: each class one contiguous range
    position = np.empty(k, np.int64)
    position[order] = np.arange(k)
    drawn = np.empty((size, k), np.int64)
    start = 0
    for n in np.bincount(stratum)[np.unique(stratum)]:
        drawn[:, start:start + n] = start + rng.integers(0, n, size=(size, n))
        start += n
    drawn += k * np.arange(size)[:, None]
    counts = np.bincount(drawn.ravel(), minlength=size * k).reshape(size, k).astype(np.float32)
    return counts[:, position[cluster_of_image]]


def bootstrap_ci(plan: BootstrapPlan, labels: np.ndarray, probs: np.ndarray, preds: np.ndarray,
                 metrics: dict[str, BatchMetric]) -> dict[str, tuple[float, float]]:
    """95% percentile intervals of each metric; ``metrics[name](weights, cm, labels, scores)`` -> B values.

    A resample that misses a class of the data, or where any metric is undefined (NaN), is left out of
    every interval, so all intervals come from the same resamples.
    """
    rng = np.random.default_rng(plan.seed)
    values: dict[str, list[np.ndarray]] = {name: [] for name in metrics}
    scores = probs[:, 1] if probs.shape[1] == 2 else probs.max(axis=1)
    classes = np.unique(labels)
    chunk = max(1, BLOCK // len(labels))
    for start in range(0, plan.resamples, chunk):
        weights = draw_weights(plan, labels, rng, min(chunk, plan.resamples - start))
        cm = confusions(weights, labels, preds, probs.shape[1]).astype(np.float64)
        whole = (cm.sum(axis=2)[:, classes] > 0).all(axis=1)
        chunk_values = {name: fn(weights, cm, labels, scores) for name, fn in metrics.items()}
        keep = whole & np.logical_and.reduce([np.isfinite(v) for v in chunk_values.values()])
        for name, v in chunk_values.items():
            values[name].append(v[keep])
    out = {}
    for name, chunks in values.items():
        v = np.concatenate(chunks)
        out[name] = (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))) if len(v) else (np.nan, np.nan)
    return out


def standard_metrics(num_classes: int) -> dict[str, BatchMetric]:
    """The intervals eval.py reports: accuracy, weighted F1, macro recall, ROC-AUC (2 classes) or QW kappa."""
    metrics: dict[str, BatchMetric] = {
        "accuracy": lambda w, cm, y, s: accuracy(cm),
        "weighted_f1": lambda w, cm, y, s: weighted_f1(cm),
        "macro_recall": lambda w, cm, y, s: macro_recall(cm),
    }
    if num_classes == 2:
        metrics["roc_auc"] = lambda w, cm, y, s: roc_auc(w, y, s)
    else:
        metrics["quadratic_kappa"] = lambda w, cm, y, s: quadratic_kappa(cm)
    return metrics


def with_intervals(point: dict[str, float | None], intervals: dict[str, tuple[float, float]]) -> dict[str, dict]:
    """{"value": x, "ci95": [lo, hi]} per metric, the percentile interval as it is.

    With a handful of images or patients the bootstrap distribution can be skewed enough that the
    interval misses the point estimate; it is reported unchanged, since widening it would hide that.
    """
    out = {}
    for name, value in point.items():
        lo, hi = intervals.get(name, (np.nan, np.nan))
        out[name] = {"value": value, "ci95": None if value is None or not np.isfinite(lo) else [lo, hi]}
    return out
