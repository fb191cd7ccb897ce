"""Names the command lines offer as choices; importing this loads no heavy library.

Scripts build their parsers from these before torch loads, so that --help is instant: importing
``data`` or ``models`` loads torch, and a package's ``__init__`` runs before any of its modules.
"""
from __future__ import annotations

import re

LAYOUTS = ("lab", "kaggle", "retina-lab", "retina-kaggle", "csv", "folders")
SPLIT_METHODS = ("patient", "fold", "random")
DEMO_TASKS = ("leukemia", "retinopathy")
AUGMENT_POLICIES = ("rotate", "upright", "none")  # data.augment: what may change without changing the class
ARCHITECTURES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")  # models.MODELS' keys


def display_name(name: str) -> str:
    """The name people write in reports: "resnet18" -> "ResNet18"."""
    return canonical_name(name).replace("resnet", "ResNet")


def canonical_name(name: str) -> str:
    """The registry key for ``name``: "ResNet18", "resnet-18", "RESNET_18" -> "resnet18".

    Raises ValueError listing the valid names when ``name`` is not a model we have.
    """
    key = re.sub(r"[\s_-]", "", name).lower()
    if key not in ARCHITECTURES:
        choices = ", ".join(display_name(m) for m in ARCHITECTURES)
        raise ValueError(f"unknown model {name!r}; choose one of: {choices}")
    return key
