"""Patient ids: one rule for the folds (data.folds) and the per-patient results (core.evaluation.evaluate).

C-NMC training names carry the subject: ``UID_11_10_1_all.bmp`` (patient 11) and
``UID_H10_3_2_hem.bmp`` (healthy subject H10). Kaggle retina names carry the patient and the eye:
``10_left.jpeg``. Kaggle's preliminary C-NMC test lists them in its ``Patient_ID`` column
(``Split.patients``). Lab lists (``0.bmp``) carry none, and then everything stays per image.

Where only some names carry an id, those images are grouped by patient and every other image is its
own group ("grouped by image"); ``PatientIds.warning`` says how many matched.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from data.retina import eye_patient
from data.sources import Split

CNMC_NAME = re.compile(r"UID_(H?\d+)_\d+_\d+_(all|hem)", re.IGNORECASE)
IMAGE_GROUP = "image "  # prefix of the id of an image whose name carries no patient id: its own group


@dataclass(frozen=True)
class PatientIds:
    """One patient id per image (None: no name carries one) and how many names carried one."""

    ids: np.ndarray | None
    matched: int
    total: int
    pattern: str = ""  # the naming rule that matched, for the warning

    @property
    def warning(self) -> str | None:
        """One line when only some names carry a patient id; None when all or none do."""
        if self.ids is None or self.matched == self.total:
            return None
        return (f"patient ids: {self.matched} of {self.total} file names follow the {self.pattern} pattern; the "
                f"other {self.total - self.matched} are grouped by image (each its own patient)")


def cnmc_patient(name: str) -> str | None:
    """The subject of a C-NMC cell name (UID_11_10_1_all -> "11", UID_H10_... -> "H10"); None if not one."""
    match = CNMC_NAME.fullmatch(name)
    return match[1].upper() if match else None


PATTERNS = {"C-NMC (UID_<patient>_<image>_<cell>_all|hem)": cnmc_patient,
            "Kaggle retina (<patient>_left|right)": eye_patient}


def find_patients(paths: Sequence[str | Path]) -> PatientIds:
    """Patient ids from file names by the naming rule most of them follow; the rest grouped by image."""
    stems = [Path(p).stem for p in paths]
    best, found = "", [None] * len(stems)
    for name, rule in PATTERNS.items():
        ids = [rule(s) for s in stems]
        if sum(i is not None for i in ids) > sum(i is not None for i in found):
            best, found = name, ids
    matched = sum(i is not None for i in found)
    if not matched:
        return PatientIds(None, 0, len(stems))
    ids = [i if i is not None else f"{IMAGE_GROUP}{p}" for i, p in zip(found, paths)]
    return PatientIds(np.array(ids), matched, len(stems), best)


def patient_ids(paths: Sequence[str | Path]) -> np.ndarray | None:
    """One patient id per image (see ``find_patients``), or None where no file name carries one."""
    return find_patients(paths).ids


def split_patients(split: Split) -> PatientIds:
    """The patients of a split: as its source lists them (Kaggle's Patient_ID), else from the file names.

    A listed id that is a C-NMC cell name counts as that name's subject; any other is the patient as written.
    """
    if split.patients is None:
        return find_patients(split.paths)
    ids = [cnmc_patient(Path(p).stem) or p or f"{IMAGE_GROUP}{path}" for p, path in zip(split.patients, split.paths)]
    return PatientIds(np.array(ids), len(ids), len(ids), "Patient_ID")
