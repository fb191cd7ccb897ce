"""Per-patient results: one row per patient, and the patient-level prediction from the mean probability.

The ids come from the file names (data.patients.patient_ids).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd


def patient_table(patients: np.ndarray, labels: np.ndarray, probs: np.ndarray, preds: np.ndarray,
                  classes: Sequence[str]) -> pd.DataFrame:
    """One row per patient: images, correct, accuracy, mean probability per class, label, prediction.

    The patient's label is the highest label among their images (a retina patient is graded by the
    worse eye; a C-NMC subject's cells all share one label). ``pred`` is filled in by the caller
    from the mean probabilities (arg-max, or the operating threshold for two classes).
    """
    frame = pd.DataFrame({"patient": patients, "label": labels, "correct": preds == labels,
                          **{f"prob_{c}": probs[:, i] for i, c in enumerate(classes)}})
    grouped = frame.groupby("patient", sort=True)
    table = grouped.agg(images=("label", "size"), correct=("correct", "sum"), label=("label", "max"))
    table["accuracy"] = table["correct"] / table["images"]
    means = grouped[[f"prob_{c}" for c in classes]].mean()
    return pd.concat([table[["images", "correct", "accuracy"]], means, table[["label"]]], axis=1).reset_index()


def mean_probs(table: pd.DataFrame, classes: Sequence[str]) -> np.ndarray:
    """Patients x classes: each patient's mean probability per class."""
    return table[[f"prob_{c}" for c in classes]].to_numpy()
