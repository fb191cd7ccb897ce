"""Crafted and damaged files fed to every script: one line, exit status 2, never a traceback."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import eval as eval_script
import plot as plot_script
import report as report_script
import train as train_script
from common.errors import run_cli
from models import build_model

HISTORY = ("epoch,train_loss,train_acc,valid_loss,valid_acc,lr,seconds\n"
           "1,0.6,0.7,0.5,0.75,0.001,1.0\n2,0.4,0.8,0.45,0.8,0.0005,1.0\n")


def good_checkpoint() -> dict:
    return {"arch": "resnet18", "num_classes": 2, "classes": ["normal", "blast"], "model_options": {"head": "linear"},
            "model": build_model("resnet18", 2).state_dict(), "epoch": 1, "config": {"data": "nowhere"},
            "preprocess": {"image_size": 32, "crop": 1.0, "mode": "center", "mean": [0.5] * 3, "std": [0.2] * 3}}


def exits_2_with_one_line(capsys: pytest.CaptureFixture, main, argv: list[str]) -> str:
    assert run_cli(main, argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("change, words", [
    ({"arch": "resnet999"}, "cannot rebuild"),
    ({"arch": 18}, "'arch' is a int"),
    ({"num_classes": "two"}, "'num_classes' is a str"),
    ({"classes": ["only-one"]}, "does not match its class names"),
    ({"preprocess": {"foo": 1}}, "invalid preprocessing"),
    ({"preprocess": {"image_size": -5}}, "invalid preprocessing"),
    ({"model_options": {"head": "xyz"}}, "cannot rebuild"),
    ({"config": "oops"}, "'config' is a str"),
    ({"model": {"conv1.weight": torch.zeros(3)}}, "weights do not fit"),
])
def test_eval_rejects_a_damaged_checkpoint(capsys, tmp_path: Path, change: dict, words: str) -> None:
    path = tmp_path / "best.pt"
    torch.save({**good_checkpoint(), **change}, path)
    assert words in exits_2_with_one_line(capsys, eval_script.main, ["-m", str(path)])


def test_eval_explains_that_plain_weights_are_not_a_run_checkpoint(capsys, tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save(build_model("resnet18", 2).state_dict(), path)
    assert "--pretrained" in exits_2_with_one_line(capsys, eval_script.main, ["-m", str(path)])


@pytest.mark.parametrize("drop", ["optimizer", "rng", "history"])
def test_resume_rejects_an_incomplete_training_state(capsys, tmp_path: Path, drop: str) -> None:
    ckpt = {**good_checkpoint(), "optimizer": {}, "scaler": {}, "rng": {}, "step": 0, "history": [],
            "best_acc": 0.0, "best_epoch": 0}
    del ckpt[drop]
    torch.save(ckpt, tmp_path / "last.pt")
    line = exits_2_with_one_line(capsys, train_script.main, ["--resume", str(tmp_path / "last.pt")])
    assert drop in line and "cannot be resumed" in line


def test_resume_rejects_a_damaged_config(capsys, tmp_path: Path) -> None:
    ckpt = {**good_checkpoint(), "optimizer": {}, "scaler": {}, "rng": {}, "step": 0, "history": [],
            "best_acc": 0.0, "best_epoch": 0, "config": {"epochs": "many", "batch_size": None}}
    torch.save(ckpt, tmp_path / "last.pt")
    assert "'epochs'" in exits_2_with_one_line(capsys, train_script.main, ["--resume", str(tmp_path / "last.pt")])


@pytest.mark.parametrize("files, words", [
    ({"history.csv": ""}, "cannot read the run history"),
    ({"history.csv": "epoch,train_acc\n1,0.5\n"}, "missing column"),
    ({"history.csv": HISTORY.replace("0.75", "abc")}, "line 2"),
    ({"history.csv": HISTORY, "config.json": "{not json"}, "not valid JSON"),
    ({"history.csv": HISTORY, "config.json": "[1, 2]"}, "JSON list"),
    ({"history.csv": HISTORY, "eval/valid_confusion.csv": "x,y\n1,2,3\n"}, "not a confusion matrix"),
    ({"history.csv": HISTORY, "eval/valid_confusion.csv": ",pred a,pred b\ntrue a,1,-2\ntrue b,0,3\n"},
     "not a confusion matrix"),
])
@pytest.mark.parametrize("script", [plot_script, report_script])
def test_plot_and_report_reject_damaged_run_files(capsys, tmp_path: Path, files: dict, words: str, script) -> None:
    run = tmp_path / "runs" / "r"
    for name, text in files.items():
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text(text)
    line = exits_2_with_one_line(capsys, script.main, ["-f", str(run), "--output", str(tmp_path / "out")])
    assert words in line
