"""torchrun with two CPU processes (gloo): one set of outputs, whole-set validation, ranks in sync."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

import eval as eval_script
from conftest import ROOT, write_lab_dataset
from core.checkpoint import load_checkpoint
from test_resume import history, wait_for

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# --ema too: the kill, restart and stop tests then cover the joint of DDP and EMA as users combine them
DDP_ARGS = ["-m", "ResNet18", "--ema", "--image-size", "32", "-b", "4", "-e", "2", "--workers", "0",
            "--device", "cpu"]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    tmp = tmp_path_factory.mktemp("ddp")
    # 13 valid images: the two ranks get uneven shards, so padding would show up in the accuracy.
    data = write_lab_dataset(tmp, n_train=32, n_valid=13, n_test=3, size=32)
    cmd = torchrun("--data", str(data), "--out", str(tmp / "storage"), "--name", "ddp", *DDP_ARGS)
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=ENV)
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
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("ema-ResNet18", "ema-ResNet34"):
        assert len(pd.read_csv(tmp_path / "storage" / name / "history.csv")) == 1
    assert result.stdout.count("parameters identical on all 2 processes") == 2


def start_torchrun(data: Path, out: Path, restarts: int = 0) -> subprocess.Popen:
    """The reference run's command, saving last.pt after every step, in its own process group."""
    cmd = torchrun("--data", str(data), "--out", str(out), "--name", "ddp", *DDP_ARGS, "--save-every", "1",
                   restarts=restarts)
    return subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def workers_of(proc: subprocess.Popen) -> list[int]:
    """The processes torchrun started (each in a session of its own, so killpg of torchrun misses them)."""
    return [int(pid) for pid in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]


def running(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    try:
        return "zombie" not in status.read_text()
    except FileNotFoundError:
        return False


def killed_mid_run(run: Path) -> bool:
    ckpt = load_checkpoint(run / "last.pt")
    return (ckpt["epoch"], ckpt["step"]) < (2, 0)


def test_ddp_run_killed_mid_epoch_and_resumed_equals_an_uninterrupted_one(ddp_run, tmp_path: Path) -> None:
    """Each rank's EMA BatchNorm statistics follow its own batches until the epoch's average: last.pt keeps them."""
    data, reference, _ = ddp_run
    proc = start_torchrun(data, tmp_path)
    wait_for(tmp_path / "ddp" / "last.pt", proc)
    for pid in [*workers_of(proc), proc.pid]:  # torchrun and both workers at once, as a lost machine would
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    assert killed_mid_run(tmp_path / "ddp"), "the run finished before it was killed"
    resumed = subprocess.run(torchrun("--resume", str(tmp_path / "ddp")), cwd=ROOT, capture_output=True, text=True,
                             timeout=600, env=ENV)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    pd.testing.assert_frame_equal(history(tmp_path / "ddp"), history(reference / "ddp"))
    ema = [load_checkpoint(run / "ddp" / "last.pt")["ema"] for run in (tmp_path, reference)]
    for name, tensor in ema[1].items():
        assert torch.equal(ema[0][name], tensor), name


def test_elastic_restart_after_a_killed_worker_continues_the_run(ddp_run, tmp_path: Path) -> None:
    data, reference, _ = ddp_run
    proc = start_torchrun(data, tmp_path, restarts=2)
    wait_for(tmp_path / "ddp" / "last.pt", proc)
    os.kill(workers_of(proc)[-1], signal.SIGKILL)
    assert killed_mid_run(tmp_path / "ddp"), "the run finished before a worker was killed"
    assert proc.wait(timeout=600) == 0, proc.stderr.read()[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir() and not p.is_symlink()) == ["cache", "ddp"]
    pd.testing.assert_frame_equal(history(tmp_path / "ddp"), history(reference / "ddp"))
    resumes = json.loads((tmp_path / "ddp" / "config.json").read_text())["resumes"]
    assert [r.get("restart") for r in resumes] == [1]


def test_a_stop_signal_to_one_process_stops_every_rank_at_the_next_step(ddp_run, tmp_path: Path) -> None:
    data = ddp_run[0]
    cmd = torchrun("--data", str(data), "--out", str(tmp_path), "--name", "ddp", *DDP_ARGS, "-e", "50")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    for line in proc.stdout:
        if line.startswith("epoch   1/50"):  # both ranks are in the training loop, signal handlers in place
            break
    os.kill(workers_of(proc)[-1], signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    ckpt = load_checkpoint(tmp_path / "ddp" / "last.pt")
    assert ckpt["epoch"] < 50 and ckpt["step"] >= 1  # saved by the stop, mid-epoch, with both ranks' state
    assert len(ckpt["ranks"]) == 2
    assert err.count("resume with: python train.py --resume") == 1  # only rank 0 prints


def test_killing_torchrun_alone_stops_its_workers_after_they_save(ddp_run, tmp_path: Path) -> None:
    """kill -9 of torchrun: its workers get SIGTERM from Linux, save last.pt and stop (no orphans training on)."""
    cmd = torchrun("--data", str(ddp_run[0]), "--out", str(tmp_path), "--name", "ddp", *DDP_ARGS, "-e", "50")
    err = tmp_path / "stderr.txt"
    with err.open("w") as stderr:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                start_new_session=True)
        for line in proc.stdout:
            if line.startswith("epoch   1/50"):
                break
        workers = workers_of(proc)
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 120
        while any(map(running, workers)):
            assert time.monotonic() < deadline, "the workers went on training after torchrun was killed"
            time.sleep(0.1)
    ckpt = load_checkpoint(tmp_path / "ddp" / "last.pt")
    assert 1 <= ckpt["epoch"] < 50 and len(ckpt["ranks"]) == 2
    assert err.read_text().count("resume with: python train.py --resume") == 1
