"""Test-time augmentation that follows the run's augmentation policy: only views the model trained on.

A model trained with ``--augment rotate`` (cells, fundus photos: no "up") saw every flip and
angle, so its TTA averages the logits of the eight flips and 90-degree turns ("flips+rot90").
``upright`` (X-rays, text) and ``none`` never saw a flip: a flipped chest is not a chest the model
knows, so their TTA is the image alone ("none"). Runs from before ``--augment`` existed all
rotated.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping

import torch

FLIPS_ROT90 = "flips+rot90"
NONE = "none"
BY_POLICY = {"rotate": FLIPS_ROT90, "upright": NONE, "none": NONE}


def tta_for(config: Mapping[str, Any]) -> str:
    """The TTA a checkpoint's training configuration allows: ``flips+rot90`` or ``none``."""
    return BY_POLICY[config.get("augment") or "rotate"]


def views(x: torch.Tensor, tta: str) -> Iterator[torch.Tensor]:
    """The views of an N x C x H x W (square) batch that ``tta`` averages over, the batch itself first."""
    yield x
    if tta == FLIPS_ROT90:  # the dihedral group: four turns, each also mirrored
        for turns in range(4):
            turned = torch.rot90(x, turns, dims=(2, 3)) if turns else x
            if turns:
                yield turned
            yield torch.flip(turned, dims=(3,))
    elif tta != NONE:
        raise ValueError(f"unknown TTA {tta!r}; expected {FLIPS_ROT90} or {NONE}")


def mean_logits(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tta: str | None) -> torch.Tensor:
    """Float32 logits of ``x``, averaged over the views of ``tta`` (None: the batch alone)."""
    if not tta:
        return model(x).float()
    total, count = None, 0
    for view in views(x, tta):
        logits = model(view).float()
        total = logits if total is None else total + logits
        count += 1
    return total / count


def combined_name(ttas: list[str | None]) -> str | None:
    """One name for what a set of models used (None: TTA off); ``mixed: a, b`` when members differ."""
    distinct = list(dict.fromkeys(ttas))
    if distinct == [None]:
        return None
    return distinct[0] if len(distinct) == 1 else "mixed: " + ", ".join(str(t) for t in ttas)
