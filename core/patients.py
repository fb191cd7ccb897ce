"""Patients behind the images: ids from file names, and per-patient results.

C-NMC training names carry the subject: ``UID_11_10_1_all.bmp`` (patient 11) and
``UID_H10_3_2_hem.bmp`` (healthy subject H10). Kaggle retina names carry the patient and the eye:
``10_left.jpeg``. Lab lists (``0.bmp``) carry none, and then everything stays per image.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from data.retina import eye_patients

CNMC_NAME = re.compile(r"UID_(H?\d+)_\d+_\d+_(all|hem)", re.IGNORECASE)


def patient_ids(paths: Sequence[Path]) -> np.ndarray | None:
    """One patient id per image, or None unless every file name carries one (C-NMC or Kaggle retina)."""
    stems = [Path(p).stem for p in paths]
    cells = [CNMC_NAME.fullmatch(s) for s in stems]
    if stems and all(cells):
        return np.array([m[1].upper() for m in cells])
    eyes = eye_patients(stems) if stems else None
    return np.array(eyes) if eyes is not None else None


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
