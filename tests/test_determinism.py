"""--deterministic: deterministic kernels, no autotuning, a fixed cuBLAS workspace, one line for an op without one.

No GPU here: the CUDA side (two runs and a SIGKILL-and-resume run giving identical histories) is what
these switches are for; on the CPU we check that they are set, kept, and that a run stays reproducible.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import train as train_script
from conftest import ROOT
from common.errors import UserError, run_cli
from core import engine
from core.hardware import enable_fast_kernels
from core.training.determinism import deterministic_errors, make_deterministic
from models import build_model

TINY = ["-m", "ResNet18", "--image-size", "32", "-b", "8", "-e", "1", "--workers", "0", "--seed", "4"]
NO_DETERMINISTIC = ("adaptive_max_pool2d_backward_cuda does not have a deterministic implementation, but you set "
                    "'torch.use_deterministic_algorithms(True)'. You can turn off determinism just for this "
                    "operation, or you can use the 'warn_only=True' option, if that's acceptable for your "
                    "application.")


@pytest.fixture
def restore_torch_flags():
    saved = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark, os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    yield
    torch.use_deterministic_algorithms(saved[0])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[1], saved[2]
    if saved[3] is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved[3]


def test_make_deterministic_sets_every_switch(restore_torch_flags, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    torch.backends.cudnn.benchmark = True
    make_deterministic(True)
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_without_the_flag_nothing_changes(restore_torch_flags) -> None:
    torch.use_deterministic_algorithms(False)
    make_deterministic(False)
    assert not torch.are_deterministic_algorithms_enabled()


def test_fast_kernels_do_not_switch_autotuning_back_on(restore_torch_flags) -> None:
    make_deterministic(True)
    enable_fast_kernels(torch.device("cuda"))  # sets cuDNN flags, touches no GPU
    assert not torch.backends.cudnn.benchmark


def test_cublas_workspace_is_set_before_cuda_starts() -> None:
    # in a fresh process: the variable must be in place by the time train.py picks the device
    code = ("import os, sys; sys.argv = ['train.py']; import train, core.hardware as h; "
            "orig = h.pick_device; "
            "h.pick_device = train.pick_device = lambda name: (print(os.environ.get('CUBLAS_WORKSPACE_CONFIG')), "
            "sys.exit(0)); train.main(['--deterministic', '--device', 'cpu'])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={k: v for k, v in os.environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"})
    assert out.stdout.strip() == ":4096:8", out.stderr[-2000:]


def test_an_op_without_a_deterministic_version_is_named_in_one_line() -> None:
    with pytest.raises(UserError, match=r"^--deterministic: the operation adaptive_max_pool2d_backward_cuda has no "
                                        r"deterministic version on this device; .*--device cpu") as caught:
        with deterministic_errors():
            raise RuntimeError(NO_DETERMINISTIC)
    assert "\n" not in str(caught.value)


def test_other_runtime_errors_pass_through() -> None:
    with pytest.raises(RuntimeError, match="shape mismatch"):
        with deterministic_errors():
            raise RuntimeError("shape mismatch")


def test_train_py_prints_that_one_line_and_exits_2(lab_data: Path, tmp_path: Path, restore_torch_flags,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    def no_deterministic_kernel(*args, **kwargs):
        raise RuntimeError(NO_DETERMINISTIC)

    monkeypatch.setattr(engine, "train_step", no_deterministic_kernel)
    argv = ["--data", str(lab_data), "--out", str(tmp_path), *TINY, "--device", "cpu", "--deterministic"]
    assert run_cli(train_script.main, argv) == 2
    err = capsys.readouterr().err  # above it only the progress bars
    assert err.splitlines()[-1].startswith("error: --deterministic: the operation adaptive_max_pool2d_backward_cuda")
    assert err.count("error") == 1 and "Traceback" not in err


def test_deterministic_runs_repeat_exactly_and_say_so(lab_data: Path, tmp_path: Path, restore_torch_flags,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("a", "b"):  # the device the machine has: on a GPU machine this is the CUDA check
        assert train_script.main(["--data", str(lab_data), "--out", str(tmp_path), *TINY, "--deterministic",
                                  "--name", name]) == 0
    assert ", deterministic" in capsys.readouterr().out
    a, b = (pd.read_csv(tmp_path / n / "history.csv").drop(columns="seconds") for n in ("a", "b"))
    pd.testing.assert_frame_equal(a, b)
    assert json.loads((tmp_path / "a" / "config.json").read_text())["deterministic"] is True


# Modules whose backward has no deterministic CUDA kernel (torch.use_deterministic_algorithms' list):
# one of them in a model would stop every --deterministic run on a GPU at its first step.
NO_DETERMINISTIC_CUDA_BACKWARD = (torch.nn.AdaptiveAvgPool2d, torch.nn.AdaptiveAvgPool3d, torch.nn.AdaptiveMaxPool2d,
                                  torch.nn.AvgPool3d, torch.nn.MaxPool3d, torch.nn.FractionalMaxPool2d,
                                  torch.nn.FractionalMaxPool3d, torch.nn.Upsample, torch.nn.ReflectionPad2d,
                                  torch.nn.EmbeddingBag, torch.nn.CTCLoss)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_every_model_can_train_with_deterministic_cuda_kernels(arch: str, head: str) -> None:
    model = build_model(arch, 2, head=head)
    found = [name for name, m in model.named_modules() if isinstance(m, NO_DETERMINISTIC_CUDA_BACKWARD)]
    assert found == []
    x = torch.randn(2, 512, 3, 5)  # the global pool still averages exactly as torchvision's adaptive pool does
    torch.testing.assert_close(model.avgpool(x), torch.nn.AdaptiveAvgPool2d((1, 1))(x), atol=1e-6, rtol=1e-6)
