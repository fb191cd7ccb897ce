"""cuDNN autotuning and TF32 are switched on by training (and bench.py) only, and only on CUDA.

The flags are process-wide settings that can be read and set without a GPU, so these run on the CPU.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import train as train_script
from core import hardware
from core.hardware import enable_fast_kernels, make_runtime
from core.training import trainer

TINY = ["-m", "ResNet18", "--image-size", "32", "-b", "8", "-e", "1", "--workers", "0", "--device", "cpu"]


def fast_flags() -> tuple[bool, bool, bool]:
    return (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)


@pytest.fixture
def pytorch_defaults():
    """cuDNN autotuning and TF32 matmuls off (PyTorch's defaults) for the test; restored after it."""
    saved = fast_flags(), torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.benchmark = torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) = saved[0]
    torch.use_deterministic_algorithms(saved[1])


def test_eval_and_predict_runtime_on_cuda_leaves_autotuning_and_tf32_alone(pytorch_defaults) -> None:
    make_runtime(torch.device("cuda"), amp=False, channels_last=None)  # what eval.py and predict.py build
    assert fast_flags() == (False, False, False)


def test_fast_kernels_switch_autotuning_and_tf32_on_for_cuda(pytorch_defaults) -> None:
    enable_fast_kernels(torch.device("cuda"))
    assert fast_flags() == (True, True, True)


@pytest.mark.parametrize("device", ["cpu", "mps"])
def test_fast_kernels_leave_other_devices_alone(pytorch_defaults, device: str) -> None:
    enable_fast_kernels(torch.device(device))
    assert fast_flags() == (False, False, False)


class SetupReached(Exception):
    pass


def test_training_asks_for_fast_kernels_on_its_device(lab_data: Path, tmp_path: Path, pytorch_defaults,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    asked = []

    def record_then_stop(device: torch.device) -> None:
        hardware.enable_fast_kernels(device)
        asked.append(device)
        raise SetupReached  # what follows (an epoch) is not what this test is about

    monkeypatch.setattr(trainer, "enable_fast_kernels", record_then_stop)
    with pytest.raises(SetupReached):
        train_script.main(["--data", str(lab_data), "--out", str(tmp_path), *TINY])
    assert asked == [torch.device("cpu")]
    assert fast_flags() == (False, False, False)  # the CPU: nothing switched
