"""Optional packages (requirements-extras.txt): imported only when a feature needs them."""
from __future__ import annotations

import importlib
from types import ModuleType

from common.errors import UserError

INSTALL_HINT = "python3 -m pip install -r requirements-extras.txt"


class MissingExtra(UserError):
    """An optional package a feature needs is not installed."""


def require(module: str, feature: str, package: str | None = None) -> ModuleType:
    """Import ``module`` for ``feature``; MissingExtra (one line, with the install command) if absent."""
    try:
        return importlib.import_module(module)
    except ImportError:
        name = package or module.split(".")[0]
        raise MissingExtra(f"{feature} needs the optional package '{name}', which is not installed; "
                           f"install the extras with: {INSTALL_HINT}  (or: pip install {name})") from None
