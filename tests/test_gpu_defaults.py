"""Without -b, a GPU gets a batch that fills it and a learning rate scaled to it; the CPU keeps the lab's 32."""
from __future__ import annotations

import math

import pytest

import train
from core.training.config import DEFAULT_LR, REFERENCE_BATCH
from core.training.gpu_defaults import CUDA_BATCH, cuda_defaults, scaled_lr


def config(*flags: str):
    return train.config_from_args(train.get_args_parser().parse_args(list(flags)))


def test_sgd_scales_linearly_and_adam_with_the_square_root() -> None:
    assert scaled_lr("sgd", 0.05, 256) == pytest.approx(0.05 * 8)
    assert scaled_lr("adamw", 1e-3, 256) == pytest.approx(1e-3 * math.sqrt(8))
    assert scaled_lr("adam", 1e-3, REFERENCE_BATCH) == pytest.approx(1e-3)


def test_cuda_defaults_take_the_big_batch_and_the_scaled_rate() -> None:
    cfg, note = cuda_defaults(config("-o", "sgd"), lr_given=False)
    assert cfg.batch_size == CUDA_BATCH and cfg.learning_rate == pytest.approx(DEFAULT_LR["sgd"] * CUDA_BATCH / 32)
    assert f"batch {CUDA_BATCH}" in note and "0.4" in note


def test_a_learning_rate_given_with_r_is_kept() -> None:
    cfg, note = cuda_defaults(config("-r", "0.01"), lr_given=True)
    assert cfg.learning_rate == 0.01 and "-r as given" in note


def test_the_cpu_default_stays_the_labs_batch() -> None:
    assert config().batch_size == REFERENCE_BATCH == 32
    assert config("-b", "8").batch_size == 8


def test_compile_mode_implies_compile() -> None:
    cfg = config("--compile-mode", "max-autotune")
    assert cfg.compile and cfg.compile_mode == "max-autotune"
    assert not config().compile
