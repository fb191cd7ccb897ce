"""The models: one entry point, ``build_model(name, num_classes, **options)``."""
from __future__ import annotations

import re
from typing import Any, Callable

from models.resnet import BasicBlock, Bottleneck, ResNet, resnet18, resnet34, resnet50, resnet101, resnet152

MODELS: dict[str, Callable[..., ResNet]] = {
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "resnet101": resnet101,
    "resnet152": resnet152,
}

__all__ = ["MODELS", "BasicBlock", "Bottleneck", "ResNet", "build_model", "canonical_name", "display_name"]


def display_name(name: str) -> str:
    """The name people write in reports: "resnet18" -> "ResNet18"."""
    return canonical_name(name).replace("resnet", "ResNet")


def canonical_name(name: str) -> str:
    """The registry key for ``name``: "ResNet18", "resnet-18", "RESNET_18" -> "resnet18".

    Raises ValueError listing the valid names when ``name`` is not a model we have.
    """
    key = re.sub(r"[\s_-]", "", name).lower()
    if key not in MODELS:
        choices = ", ".join(display_name(m) for m in MODELS)
        raise ValueError(f"unknown model {name!r}; choose one of: {choices}")
    return key


def build_model(name: str, num_classes: int, **options: Any) -> ResNet:
    """A freshly initialised ``name`` with ``num_classes`` outputs.

    ``options`` go to ResNet: ``zero_init_residual``, ``head`` ("linear" or "mlp"),
    ``hidden`` and ``dropout`` (MLP head only).
    """
    return MODELS[canonical_name(name)](num_classes=num_classes, **options)
