"""Are the probabilities honest? Expected calibration error, reliability bins, temperature scaling.

``--calibrate`` fits one temperature T on the valid split (minimum cross-entropy of
softmax(log p / T)), saves it as ``temperature.json`` beside the eval outputs with what it was
fitted on (core.evaluation.fitted) and applies it to every probability written; dividing all logits by one
positive number keeps every arg-max (softmax(log p / T) = softmax(logits / T)).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax
from sklearn.calibration import calibration_curve

from core.runs import read_saved, write_json

FILE = "temperature.json"
BINS = 15


def reliability(labels: np.ndarray, probs: np.ndarray, bins: int = BINS) -> dict[str, list[float]]:
    """Top-label reliability bins (non-empty ones): mean confidence, accuracy and share of images."""
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(int)
    accuracy, mean_confidence = calibration_curve(correct, confidence, n_bins=bins, strategy="uniform")
    # scikit-learn's own binning (uniform edges, empty bins dropped), to weight each bin by its size
    ids = np.searchsorted(np.linspace(0, 1, bins + 1)[1:-1], confidence)
    counts = np.bincount(ids, minlength=bins)
    share = counts[counts > 0] / len(labels)
    return {"confidence": mean_confidence.tolist(), "accuracy": accuracy.tolist(), "share": share.tolist()}


def expected_calibration_error(bins: dict[str, list[float]]) -> float:
    """Sum over bins of (share of images) x |accuracy - mean confidence|."""
    gap = np.abs(np.array(bins["accuracy"]) - np.array(bins["confidence"]))
    return float((np.array(bins["share"]) * gap).sum())


def scale(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): the probabilities of logits divided by T."""
    return np.exp(log_softmax(np.log(np.clip(probs, 1e-12, 1.0)) / temperature, axis=1))


def nll(labels: np.ndarray, probs: np.ndarray) -> float:
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)).mean())


def quality(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Cross-entropy and ECE of probabilities (temperature.json records them before and after)."""
    return {"nll": nll(labels, probs), "ece": expected_calibration_error(reliability(labels, probs))}


def fit_temperature(labels: np.ndarray, probs: np.ndarray) -> float:
    """The T in [0.05, 20] that minimises the cross-entropy of ``scale(probs, T)``."""
    result = minimize_scalar(lambda log_t: nll(labels, scale(probs, float(np.exp(log_t)))),
                             bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(result.x))


def save(folder: Path, temperature: float, before: dict[str, float], after: dict[str, float],
         fitted_on: dict[str, Any]) -> None:
    """``fitted_on``: core.evaluation.fitted.provenance (checkpoints, TTA, split, data fingerprint)."""
    write_json(folder / FILE, {"temperature": temperature, "fitted_on": fitted_on, "before": before, "after": after})


def load(folder: Path) -> dict[str, Any] | None:
    """The saved temperature of a run, or None; UserError if the file is damaged."""
    return read_saved(folder / FILE, "temperature", lambda t: t > 0, "fit one again with --calibrate")
