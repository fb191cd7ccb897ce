"""In a log file (stderr not a terminal) progress is plain lines at a steady pace, never a bar."""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

import train as train_script
from common.errors import UserError
from common.progress import progress, track


def test_a_task_in_a_log_file_prints_one_summary_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert list(track(range(5), 5, "predict", "batch")) == [0, 1, 2, 3, 4]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("predict: 5/5 batch in ")
    assert "\r" not in err


def test_a_transient_bar_leaves_nothing_in_a_log_file(capsys: pytest.CaptureFixture[str]) -> None:
    with progress(10, "epoch 1", "batch", transient=True) as bar:
        bar.update(10)
        bar.set_postfix(loss="0.1")
    assert capsys.readouterr().err == ""


def test_the_summary_counts_from_where_a_resumed_task_started(capsys: pytest.CaptureFixture[str]) -> None:
    with progress(10, "cache", "img", initial=4) as bar:
        bar.update(6)
    assert "cache: 10/10 img" in capsys.readouterr().err


def test_a_terminal_gets_a_tqdm_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("common.progress.is_terminal", lambda: True)
    with progress(3, "x", "img") as bar:
        assert type(bar).__name__ == "tqdm"


def test_a_long_task_in_a_log_file_prints_lines_at_the_set_pace(capsys: pytest.CaptureFixture[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROGRESS_SECONDS", "0.01")
    with progress(300, "epoch 2", "step", transient=True, per_step=8, status=lambda: {"loss": "0.1234"}) as bar:
        for _ in range(300):
            time.sleep(0.0003)
            bar.update()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) >= 2 and "\r" not in "".join(lines)
    assert all(re.fullmatch(r"epoch 2: step \d+/300 \(\d+%\), [\d.]+ img/s, loss 0\.1234, \d+ s left", line)
               for line in lines), lines


def test_no_line_before_the_pace_is_due(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROGRESS_SECONDS", "3600")
    for _ in track(range(300), 300, "predict", "batch"):
        pass
    assert capsys.readouterr().err.startswith("predict: 300/300 batch in ")


def test_a_bad_pace_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROGRESS_SECONDS", "soon")
    with pytest.raises(UserError, match="PROGRESS_SECONDS"):
        progress(3, "x", "img")


def test_a_redirected_training_run_reports_its_steps(lab_data: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROGRESS_SECONDS", "0")  # a line after every step
    assert train_script.main(["--data", str(lab_data), "--out", str(tmp_path), "-m", "ResNet18", "--image-size", "32",
                              "-b", "4", "-e", "1", "--workers", "0", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"^epoch 1: step 3/8 \(38%\), [\d.]+ img/s, loss \d\.\d{4}, \d+ s left$", err, re.M), err
