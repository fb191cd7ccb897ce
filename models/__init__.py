"""The models: one entry point, ``build_model(name, num_classes, **options)``."""
from __future__ import annotations

import importlib
import re
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from models.resnet import BasicBlock, Bottleneck, ResNet

# The registry's keys, known without importing torch (argparse choices, --help).
ARCHITECTURES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
_RESNET_NAMES = ("BasicBlock", "Bottleneck", "ResNet", *ARCHITECTURES)

__all__ = ["ARCHITECTURES", "MODELS", "BasicBlock", "Bottleneck", "ResNet", "build_model", "canonical_name",
           "display_name"]


def __getattr__(name: str) -> Any:
    """``MODELS`` and the classes load models.resnet (and torch) on first use."""
    if name not in ("MODELS", *_RESNET_NAMES):
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    resnet = importlib.import_module("models.resnet")
    globals().update({n: getattr(resnet, n) for n in _RESNET_NAMES}, MODELS=_registry())
    return globals()[name]


def _registry() -> dict[str, Callable[..., ResNet]]:
    resnet = importlib.import_module("models.resnet")
    return {arch: getattr(resnet, arch) for arch in ARCHITECTURES}


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


def build_model(name: str, num_classes: int, **options: Any) -> ResNet:
    """A freshly initialised ``name`` with ``num_classes`` outputs.

    ``options`` go to ResNet: ``zero_init_residual``, ``head`` ("linear" or "mlp"),
    ``hidden`` and ``dropout`` (MLP head only).
    """
    return _registry()[canonical_name(name)](num_classes=num_classes, **options)
