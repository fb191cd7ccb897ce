"""Checkpoints written before the code moved into core/ and data/ still load in eval.py and resume in train.py."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

import eval as eval_script
import train as train_script
from conftest import write_lab_dataset
from core.checkpoint import save_checkpoint

# What train.py wrote into last.pt and best.pt on main before the move (commit e82eb9b), read off a real run.
OLD_KEYS = {"arch", "best_acc", "best_epoch", "classes", "config", "epoch", "format", "history", "model",
            "model_options", "num_classes", "optimizer", "preprocess", "rng", "scaler", "step", "sums", "task", "valid"}
OLD_CONFIG = {"amp", "backbone_lr_scale", "balanced_sampler", "batch_size", "cache", "channels_last", "class_weights",
              "compile", "data", "device", "epochs", "freeze_epochs", "head", "image_size", "label_smoothing", "layout",
              "learning_rate", "models", "momentum", "name", "optimizer", "out", "pretrained", "save_every",
              "save_minutes", "scheduler", "seed", "split", "sync_bn", "warmup_epochs", "weight_decay", "workers",
              "zero_init_residual"}
TRAINING_STATE = {"optimizer", "scaler", "rng", "sums"}  # only in last.pt since best.pt became weights-only
TINY = ["-m", "ResNet18", "--image-size", "32", "-b", "8", "--workers", "0", "--seed", "1"]


@pytest.fixture(scope="module")
def old_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder whose best.pt and last.pt hold exactly the old keys and settings."""
    root = tmp_path_factory.mktemp("compat")
    data = write_lab_dataset(root, n_train=24, n_valid=8, n_test=4, size=32)
    out = root / "storage"
    assert train_script.main(["--data", str(data), "--out", str(out), *TINY, "-e", "1", "--name", "new"]) == 0
    old = out / "old"
    old.mkdir()
    last = torch.load(out / "new" / "last.pt", weights_only=True)
    for name in ("best.pt", "last.pt"):
        ckpt = torch.load(out / "new" / name, weights_only=True)
        kept = OLD_KEYS if name == "last.pt" else OLD_KEYS - TRAINING_STATE  # best.pt is weights + metadata now
        assert kept <= set(ckpt) and OLD_CONFIG <= set(ckpt["config"]), "a key the old code wrote is gone"
        ckpt = {**{k: last[k] for k in TRAINING_STATE}, **ckpt}  # the old best.pt carried the training state too
        ckpt = {k: v for k, v in ckpt.items() if k in OLD_KEYS}
        ckpt["config"] = {k: v for k, v in ckpt["config"].items() if k in OLD_CONFIG}
        save_checkpoint(ckpt, old / name)
    (old / "history.csv").write_bytes((out / "new" / "history.csv").read_bytes())
    return old


def test_an_old_checkpoint_evaluates(old_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert eval_script.main(["-m", str(old_run), "-c", "--output", str(old_run / "eval")]) == 0
    assert "accuracy" in capsys.readouterr().out
    submission = pd.read_csv(next((old_run / "eval").glob("*submission.csv")))
    assert list(submission.columns) == ["ID", "label"] and len(submission) == 4


def test_an_old_checkpoint_resumes_for_more_epochs(old_run: Path) -> None:
    assert train_script.main(["--resume", str(old_run), "-e", "2"]) == 0
    history = pd.read_csv(old_run / "history.csv")
    assert history["epoch"].tolist() == [1, 2]
    assert torch.load(old_run / "last.pt", weights_only=True)["epoch"] == 2


def test_checkpoint_digest_changes_with_content(tmp_path):
    from core.checkpoint import checkpoint_digest, save_checkpoint

    path = tmp_path / "best.pt"
    save_checkpoint({"model": {"w": torch.zeros(3)}, "epoch": 1}, path)
    first = checkpoint_digest(path)
    assert first == checkpoint_digest(path) and len(first) == 16
    save_checkpoint({"model": {"w": torch.ones(3)}, "epoch": 1}, path)
    assert checkpoint_digest(path) != first
