"""In a log file (stderr not a terminal) progress is one plain line per task, never a bar."""
from __future__ import annotations

import pytest

from core.progress import progress, track


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
    monkeypatch.setattr("core.progress.is_terminal", lambda: True)
    with progress(3, "x", "img") as bar:
        assert type(bar).__name__ == "tqdm"
