"""The models: one entry point, ``build_model(name, num_classes, **options)``."""
from __future__ import annotations

from typing import Any, Callable

# Plain imports: importing models loads torch. What --help needs (ARCHITECTURES, the name helpers)
# lives in common.choices, which imports nothing, because this file runs before any module of models.
from common.choices import ARCHITECTURES, canonical_name, display_name
from models.resnet import BasicBlock, Bottleneck, ResNet, resnet18, resnet34, resnet50, resnet101, resnet152

MODELS: dict[str, Callable[..., ResNet]] = {"resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50,
                                            "resnet101": resnet101, "resnet152": resnet152}

__all__ = ["ARCHITECTURES", "MODELS", "BasicBlock", "Bottleneck", "ResNet", "build_model", "canonical_name",
           "display_name", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]


def build_model(name: str, num_classes: int, **options: Any) -> ResNet:
    """A freshly initialised ``name`` with ``num_classes`` outputs.

    ``options`` go to ResNet: ``zero_init_residual``, ``head`` ("linear" or "mlp"),
    ``hidden`` and ``dropout`` (MLP head only).
    """
    return MODELS[canonical_name(name)](num_classes=num_classes, **options)
