"""argparse types shared by the scripts; importing this loads no heavy library (fast --help)."""
from __future__ import annotations

import argparse

from common.choices import canonical_name


def model_name(text: str) -> str:
    """argparse type of -m: any spelling of a model we have -> its registry key."""
    try:
        return canonical_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_int(text: str) -> int:
    """argparse type of a count that must be at least 1 (-b/--batch_size)."""
    n = whole_number(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def cam_count(text: str) -> int:
    """argparse type of --cam: a whole number >= 0."""
    n = whole_number(text)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (off) or more, got {n}")
    return n


def whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
