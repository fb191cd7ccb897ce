"""Defaults that use a GPU well: with no -b on CUDA, a batch of 256 and the learning rate scaled to it.

The CPU keeps the lab's batch of 32. The rule for the learning rate (only when -r is not given),
from the reference batch of 32 that DEFAULT_LR was tuned at:
SGD scales linearly (Goyal et al. 2017, with the warm-up train.py already does); Adam and AdamW
scale with the square root of the batch ratio (their update size does not grow with the batch).
"""
from __future__ import annotations

import math
from dataclasses import replace

from core.training.config import REFERENCE_BATCH, TrainConfig

CUDA_BATCH = 256  # fills an H100 for ResNet18-152 at 224 px with bf16 (ResNet152: about 60 GiB)


def scaled_lr(optimizer: str, lr: float, batch_size: int) -> float:
    """``lr`` (tuned at REFERENCE_BATCH) for ``batch_size``: linear for SGD, square root for Adam(W)."""
    ratio = batch_size / REFERENCE_BATCH
    return lr * ratio if optimizer == "sgd" else lr * math.sqrt(ratio)


def cuda_defaults(cfg: TrainConfig, lr_given: bool) -> tuple[TrainConfig, str]:
    """``cfg`` with the CUDA batch (and, unless -r was given, the scaled learning rate); a line saying so."""
    lr = cfg.learning_rate if lr_given else scaled_lr(cfg.optimizer, cfg.learning_rate, CUDA_BATCH)
    rule = "-r as given" if lr_given else \
        f"learning rate {cfg.learning_rate:g} x {'' if cfg.optimizer == 'sgd' else 'sqrt '}" \
        f"({CUDA_BATCH}/{REFERENCE_BATCH}) = {lr:.3g}"
    note = f"GPU defaults: batch {CUDA_BATCH} per GPU (no -b given; -b 32 for the lab's), {rule}"
    return replace(cfg, batch_size=CUDA_BATCH, learning_rate=lr), note
