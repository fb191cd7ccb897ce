"""Names the command lines offer as choices; importing this loads no heavy library."""
from __future__ import annotations

LAYOUTS = ("lab", "kaggle", "retina-lab", "retina-kaggle", "csv", "folders")
SPLIT_METHODS = ("patient", "fold", "random")
DEMO_TASKS = ("leukemia", "retinopathy")
AUGMENT_POLICIES = ("rotate", "upright", "none")  # data.augment: what may change without changing the class
