"""Per-patient results: one row per patient, with one rule for the patient's label and prediction.

The ids come from data.patients. The rule follows what an image is of:

- ``worse eye`` (Kaggle retina names, ``10_left``): each eye is graded on its own and a patient is as
  sick as the worse eye, so the label is the highest grade among the eyes and the prediction is the
  highest *predicted* grade among them.
- ``mean probability`` (C-NMC cells, which all carry their subject's diagnosis): the label is that
  diagnosis and the prediction comes from the mean of the cells' probabilities (arg-max, or the
  operating threshold for two classes), so one odd cell does not decide.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pandas as pd

WORSE_EYE = "worse eye"
MEAN_PROBABILITY = "mean probability"


def patient_rule(pattern: str) -> str:
    """The rule for patients found by ``pattern`` (data.patients.PatientIds.pattern)."""
    return WORSE_EYE if pattern.lower().startswith("kaggle retina") else MEAN_PROBABILITY


def patient_table(patients: np.ndarray, labels: np.ndarray, probs: np.ndarray, preds: np.ndarray,
                  classes: Sequence[str]) -> pd.DataFrame:
    """One row per patient: images, correct, accuracy, mean probability per class, label, worst_pred.

    The label is the highest label among the patient's images (the worse eye; a C-NMC subject's cells
    all share one label); ``worst_pred`` is the highest predicted label. ``patient_predictions`` turns a
    rule into the patient's prediction.
    """
    frame = pd.DataFrame({"patient": patients, "label": labels, "pred": preds, "correct": preds == labels,
                          **{f"prob_{c}": probs[:, i] for i, c in enumerate(classes)}})
    grouped = frame.groupby("patient", sort=True)
    table = grouped.agg(images=("label", "size"), correct=("correct", "sum"), label=("label", "max"),
                        worst_pred=("pred", "max"))
    table["accuracy"] = table["correct"] / table["images"]
    means = grouped[[f"prob_{c}" for c in classes]].mean()
    return pd.concat([table[["images", "correct", "accuracy"]], means, table[["worst_pred", "label"]]],
                     axis=1).reset_index()


def patient_predictions(table: pd.DataFrame, rule: str, classes: Sequence[str],
                        decide: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Each patient's prediction by ``rule``; ``decide`` turns mean probabilities into labels (mean rule)."""
    if rule == WORSE_EYE:
        return table["worst_pred"].to_numpy()
    return decide(mean_probs(table, classes))


def mean_probs(table: pd.DataFrame, classes: Sequence[str]) -> np.ndarray:
    """Patients x classes: each patient's mean probability per class."""
    return table[[f"prob_{c}" for c in classes]].to_numpy()
