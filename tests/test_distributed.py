"""torchrun with two CPU processes (gloo): one set of outputs, whole-set validation, ranks in sync."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import eval as eval_script
from conftest import ROOT, write_lab_dataset


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    tmp = tmp_path_factory.mktemp("ddp")
    # 13 valid images: the two ranks get uneven shards, so padding would show up in the accuracy.
    data = write_lab_dataset(tmp, n_train=32, n_valid=13, n_test=3, size=32)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "train.py", "--data", str(data), "--out", str(tmp / "storage"), "--name", "ddp", "-m", "ResNet18",
           "--image-size", "32", "-b", "4", "-e", "2", "--workers", "0", "--device", "cpu"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return data, tmp / "storage", result


def test_torchrun_writes_one_set_of_outputs(ddp_run) -> None:
    _, storage, result = ddp_run
    runs = [p for p in storage.iterdir() if p.is_dir() and not p.is_symlink() and p.name != "cache"]
    assert [p.name for p in runs] == ["ddp"]
    assert len(pd.read_csv(storage / "ddp" / "history.csv")) == 2
    assert result.stdout.count("epoch   2/2") == 1  # only rank 0 prints
    assert json.loads((storage / "ddp" / "config.json").read_text())["world_size"] == 2


def test_torchrun_ranks_end_with_identical_parameters(ddp_run) -> None:
    assert "parameters identical on all 2 processes" in ddp_run[2].stdout


def test_torchrun_valid_accuracy_equals_a_single_process_evaluation(ddp_run, tmp_path: Path) -> None:
    data, storage, _ = ddp_run
    history = pd.read_csv(storage / "ddp" / "history.csv")
    assert eval_script.main(["-m", str(storage / "ddp" / "last.pt"), "--data", str(data), "--split", "valid",
                             "-c", "--output", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "valid_metrics.json").read_text())
    assert metrics["images"] == 13
    assert metrics["accuracy"]["value"] == pytest.approx(history["valid_acc"].iloc[-1], abs=1e-9)


def test_checkpoint_of_a_torchrun_run_has_no_module_prefix(ddp_run) -> None:
    import torch
    state = torch.load(ddp_run[1] / "ddp" / "best.pt", weights_only=True)["model"]
    assert "conv1.weight" in state and not any(k.startswith("module.") for k in state)


def torchrun(*args: str, nproc: int = 2, restarts: int = 0, **kw) -> list[str]:
    """The torchrun command line for train.py on CPU processes."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            *([f"--max-restarts={restarts}"] if restarts else []), "train.py", *args]


def test_ema_with_two_processes_trains_every_model_and_the_ranks_agree(tmp_path: Path) -> None:
    data = write_lab_dataset(tmp_path, n_train=16, n_valid=5, n_test=1, size=32)
    cmd = torchrun("--data", str(data), "--out", str(tmp_path / "storage"), "--name", "ema", "-m", "ResNet18",
                   "ResNet34", "--ema", "--image-size", "32", "-b", "4", "-e", "1", "--workers", "0",
                   "--device", "cpu")
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("ema-ResNet18", "ema-ResNet34"):
        assert len(pd.read_csv(tmp_path / "storage" / name / "history.csv")) == 1
    assert result.stdout.count("parameters identical on all 2 processes") == 2
