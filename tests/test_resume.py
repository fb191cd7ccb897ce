"""Crash safety: SIGKILL mid-epoch and resume, SIGTERM, NaN loss, unsafe checkpoints."""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from conftest import ROOT, write_lab_dataset

# --device cpu: the histories are compared exactly (on a GPU that needs --deterministic: see DEVICES)
ARGS = ["-m", "ResNet18", "--image-size", "32", "-b", "8", "-e", "2", "--seed", "3", "--workers", "0",
        "--device", "cpu"]
DEVICES = [pytest.param([], id="cpu"),
           pytest.param(["--device", "cuda", "--deterministic"], id="cuda-deterministic",
                        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"))]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 96 training images = 12 steps per epoch: room to kill the process mid-epoch.
    return write_lab_dataset(tmp_path_factory.mktemp("resume"), n_train=96, n_valid=16, n_test=4, size=32)


def start(data: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "train.py", "--data", str(data), "--out", str(out), *ARGS, *extra],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"training ended before {path.name} appeared: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.005)


def history(run: Path) -> pd.DataFrame:
    return pd.read_csv(run / "history.csv").drop(columns="seconds")


@pytest.mark.parametrize("device", DEVICES)
def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(data: Path, tmp_path: Path,
                                                                  device: list[str]) -> None:
    full = start(data, tmp_path / "full", "--name", "run", "--save-every", "1", *device)
    assert full.wait(timeout=300) == 0, full.stderr.read()[-2000:]

    proc = start(data, tmp_path / "killed", "--name", "run", "--save-every", "1", *device)
    wait_for(tmp_path / "killed" / "run" / "last.pt", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ckpt = load_checkpoint(tmp_path / "killed" / "run" / "last.pt")
    assert (ckpt["epoch"], ckpt["step"]) < (2, 0), "the run finished before it was killed"

    resumed = subprocess.run([sys.executable, "train.py", "--resume", str(tmp_path / "killed" / "run")],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    pd.testing.assert_frame_equal(history(tmp_path / "killed" / "run"), history(tmp_path / "full" / "run"))


def test_sigterm_saves_last_checkpoint_and_says_how_to_resume(data: Path, tmp_path: Path) -> None:
    proc = start(data, tmp_path, "--name", "run", "-e", "50")
    for line in proc.stdout:  # the model line is printed just before the first step
        if line.startswith("ResNet18:"):
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "resume with: python train.py --resume" in err
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["epoch"] * 12 + ckpt["step"] >= 1


def test_nan_loss_stops_the_run_naming_epoch_and_step(data: Path, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "train.py", "--data", str(data), "--out", str(tmp_path), *ARGS,
                             "-o", "sgd", "-r", "1e30", "--label-smoothing", "0"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "NaN/inf at epoch 1, step" in result.stderr
    assert "Traceback" not in result.stderr


class _CreatesFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_crafted_pickle_is_refused_and_runs_no_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"model": _CreatesFile(marker)}, evil)
    result = subprocess.run([sys.executable, "eval.py", "-m", str(evil)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    assert "not a safe checkpoint" in result.stderr and "Traceback" not in result.stderr
    assert not marker.exists()
    torch.load(evil, weights_only=False)  # the file really would have run code
    assert marker.exists()


def test_checkpoint_write_is_atomic_when_saving_fails(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1}, path)

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_checkpoint({"epoch": 2, "bad": Unsaveable()}, path)
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_resuming_with_another_architecture_names_both(data: Path, tmp_path: Path) -> None:
    path = tmp_path / "r" / "last.pt"
    save_checkpoint({"arch": "resnet18", "num_classes": 2, "config": {}, "model": {}}, path)
    result = subprocess.run([sys.executable, "train.py", "--resume", str(path), "-m", "ResNet50"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    assert "resnet18" in result.stderr.lower() and "resnet50" in result.stderr.lower()


def test_truncated_checkpoint_gives_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "best.pt"
    save_checkpoint({"epoch": 1, "model": {"w": torch.zeros(1000)}}, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(path)


def test_resume_latest_continues_the_newest_run(data: Path, tmp_path: Path) -> None:
    import train as train_script

    out = tmp_path / "storage"
    assert train_script.main(["--data", str(data), "--out", str(out), *ARGS, "-e", "1", "--name", "a"]) == 0
    assert train_script.main(["--resume", "latest", "--out", str(out), "-e", "2"]) == 0
    assert len(pd.read_csv(out / "a" / "history.csv")) == 2
    assert (out / "latest").resolve() == (out / "a").resolve()
    assert not (out / "latest" / "history.csv").is_symlink()


@pytest.fixture(scope="module")
def diverged(data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """A run whose loss explodes after a few steps while last.pt is saved after every step."""
    out = tmp_path_factory.mktemp("diverged")
    result = subprocess.run([sys.executable, "train.py", "--data", str(data), "--out", str(out), *ARGS, "--name", "run",
                             "-o", "sgd", "-r", "1e5", "--label-smoothing", "0", "--save-every", "1"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    return out / "run", result


def test_a_diverging_run_keeps_a_finite_last_checkpoint_and_names_what_it_holds(diverged) -> None:
    run, result = diverged
    assert result.returncode == 2 and "Traceback" not in result.stderr
    ckpt = load_checkpoint(run / "last.pt")
    tensors = [t for part in (ckpt["model"], ckpt["sums"] or {}) for t in part.values()
               if isinstance(t, torch.Tensor) and t.is_floating_point()]
    assert all(torch.isfinite(t).all() for t in tensors)
    assert f"holds epoch {ckpt['epoch'] + 1} up to step {ckpt['step']}, the last finite state" in result.stderr


def test_a_diverged_run_resumes_from_its_last_finite_state_with_a_lower_rate(diverged) -> None:
    run, _ = diverged
    held = load_checkpoint(run / "last.pt")
    assert int(held["sums"]["bad_step"]) == -1  # no bad step saved with the state, to re-raise at once
    resumed = subprocess.run([sys.executable, "train.py", "--resume", str(run), "-r", "1e-3"],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    # It trains on from there: it either finishes or (the weights having exploded before they became
    # NaN) stops at a later step, never at the one it resumed from.
    if resumed.returncode:
        epoch, step = map(int, re.search(r"at epoch (\d+), step (\d+)", resumed.stderr).groups())
        assert (epoch, step) > (held["epoch"] + 1, held["step"]), resumed.stderr[-500:]


@pytest.fixture(scope="module")
def extended(data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[float], str, dict]:
    """A finished 1-epoch run resumed with -e 2: its run folder, the learning rate of every step the
    resumed session took, what that session printed, and the first session's timing.json."""
    import json

    import train as train_script
    from core import engine

    out = tmp_path_factory.mktemp("extended")
    first = ["train.py", "--data", str(data), "--out", str(out), *ARGS, "-e", "1", "--name", "run"]
    second = ["train.py", "--resume", str(out / "run"), "-e", "2"]
    lrs: list[float] = []
    real_step = engine.train_step

    def spy(learner, images, labels):  # noqa: ANN001, ANN202
        lrs.append(learner.optimizer.param_groups[0]["lr"])
        return real_step(learner, images, labels)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", first)
        assert train_script.main(first[1:]) == 0
        first_timing = json.loads((out / "run" / "timing.json").read_text())
        mp.setattr(sys, "argv", second)
        mp.setattr(engine, "train_step", spy)
        buffer = __import__("io").StringIO()
        with __import__("contextlib").redirect_stdout(buffer):
            assert train_script.main(second[1:]) == 0
    return out / "run", lrs, buffer.getvalue(), first_timing


def test_training_longer_than_a_finished_schedule_starts_a_lower_one_and_says_so(extended) -> None:
    from core.training.resume import EXTEND_PEAK, EXTEND_WARMUP

    run, lrs, printed, _ = extended
    peak, steps = 1e-3, 12  # adamw's default rate; 96 images / -b 8
    assert "the 1-epoch schedule had finished; epochs 2-2 get a new cosine schedule peaking at" in printed
    assert lrs[0] == pytest.approx(peak * EXTEND_PEAK / round(EXTEND_WARMUP * steps))  # warm-up from near 0
    assert max(lrs) == pytest.approx(peak * EXTEND_PEAK)


def test_a_resumed_run_keeps_its_original_command_and_lists_the_resume(extended) -> None:
    import json

    config = json.loads((extended[0] / "config.json").read_text())
    assert config["command"].startswith("python train.py --data")
    assert [(r["command"].split()[2], r["epoch"]) for r in config["resumes"]] == [("--resume", 1)]


def test_timing_adds_up_over_the_sessions_of_a_run(extended) -> None:
    import json

    first = extended[3]
    timing = json.loads((extended[0] / "timing.json").read_text())
    assert (first["sessions"], timing["sessions"]) == (1, 2)
    for phase in ("setup", "train steps", "validation", "total"):  # the second session trained an epoch too
        assert timing[phase] > first[phase]


def test_resuming_where_fp16_needs_a_loss_scale_the_file_lacks_starts_a_fresh_one(capsys, tmp_path: Path) -> None:
    from core import distributed
    from core.checkpoint import rng_state
    from core.training.resume import Resume, restore
    from models import build_model

    model = build_model("resnet18", 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    saved = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": {}, "rng": rng_state(),
             "sums": None, "epoch": 1, "step": 0, "history": [], "best_acc": 0.5, "best_epoch": 1}  # as on a CPU
    scaler = torch.amp.GradScaler("cpu", enabled=True)  # as under fp16 AMP on a T4 or V100
    counters = restore(Resume(saved, tmp_path), (model, None), optimizer, scaler, torch.device("cpu"),
                       distributed.Dist())
    assert counters.epoch == 1 and scaler.get_scale() == 65536.0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and "the GradScaler starts fresh" in lines[0]


def test_a_two_process_state_resumed_in_one_process_counts_both_partial_sums_once() -> None:
    from core import distributed
    from core.training.resume import rank_state

    def sums(loss: float, seen: int) -> dict:
        return {"loss": torch.tensor(loss, dtype=torch.float64), "objective": torch.tensor(loss, dtype=torch.float64),
                "correct": torch.tensor(seen // 2), "seen": torch.tensor(seen), "bad_step": torch.tensor(-1),
                "seconds": 1.0}

    ckpt = {"rng": "rank 0", "sums": sums(2.0, 8), "ranks": [{"rng": "rank 0", "sums": sums(2.0, 8)},
                                                             {"rng": "rank 1", "sums": sums(3.0, 8)}]}
    rng, mine, _ = rank_state(ckpt, distributed.Dist())
    assert rng == "rank 0"
    assert (mine["loss"].item(), mine["seen"].item(), mine["bad_step"].item()) == (5.0, 16, -1)
    rng, theirs, _ = rank_state(ckpt, distributed.Dist(rank=1, world_size=2))
    assert rng == "rank 1" and theirs["loss"].item() == 3.0
