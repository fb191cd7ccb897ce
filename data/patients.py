"""Patient ids from file names: one rule for the folds (data.folds) and the per-patient results (core.evaluate).

C-NMC training names carry the subject: ``UID_11_10_1_all.bmp`` (patient 11) and
``UID_H10_3_2_hem.bmp`` (healthy subject H10). Kaggle retina names carry the patient and the eye:
``10_left.jpeg``. Lab lists (``0.bmp``) carry none, and then everything stays per image.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np

from data.retina import eye_patients

CNMC_NAME = re.compile(r"UID_(H?\d+)_\d+_\d+_(all|hem)", re.IGNORECASE)


def patient_ids(paths: Sequence[str | Path]) -> np.ndarray | None:
    """One patient id per image, or None unless every file name carries one (C-NMC or Kaggle retina)."""
    stems = [Path(p).stem for p in paths]
    cells = [CNMC_NAME.fullmatch(s) for s in stems]
    if stems and all(cells):
        return np.array([m[1].upper() for m in cells])
    eyes = eye_patients(stems) if stems else None
    return np.array(eyes) if eyes is not None else None
