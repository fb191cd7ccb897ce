"""Runs are found where the user put them: `latest` and folders of runs at any depth."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from common.errors import UserError
from core.checkpoint import CheckpointError, resolve_checkpoint
from core.runs import find_runs, newest_run


def fake_run(folder: Path, when: float) -> Path:
    """A run folder as train.py leaves it, last written at ``when`` (seconds since the epoch)."""
    folder.mkdir(parents=True)
    for name in ("history.csv", "best.pt", "last.pt"):
        (folder / name).write_text("x")
        os.utime(folder / name, (when, when))
    return folder


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    root = tmp_path / "storage"
    fake_run(root / "demo" / "ResNet18", 1000)
    fake_run(root / "demo" / "ResNet152", 3000)
    fake_run(root / "old" / "deep" / "ResNet50", 2000)
    (root / "cache").mkdir()
    return root


def test_latest_is_the_newest_run_at_any_depth(storage: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert resolve_checkpoint("latest", storage=storage) == storage / "demo" / "ResNet152" / "best.pt"
    assert "demo/ResNet152" in capsys.readouterr().out  # the choice is said


def test_folder_slash_latest_searches_that_folder(storage: Path) -> None:
    got = resolve_checkpoint(storage / "old" / "latest", prefer="last.pt")
    assert got == storage / "old" / "deep" / "ResNet50" / "last.pt"


def test_a_folder_of_runs_means_its_newest_run(storage: Path) -> None:
    assert resolve_checkpoint(storage / "demo") == storage / "demo" / "ResNet152" / "best.pt"


def test_a_run_folder_is_taken_as_given(storage: Path) -> None:
    assert resolve_checkpoint(storage / "demo" / "ResNet18") == storage / "demo" / "ResNet18" / "best.pt"


def test_a_latest_link_is_not_counted_twice(storage: Path) -> None:
    (storage / "demo" / "latest").symlink_to("ResNet18", target_is_directory=True)
    assert len(find_runs([storage])) == 3


def test_find_runs_descends_to_any_depth(storage: Path) -> None:
    names = {r.name for r in find_runs([storage])}
    assert names == {"ResNet18", "ResNet50", "ResNet152"}


def test_nothing_found_names_where_it_looked(tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(UserError, match="empty.*any depth"):
        newest_run(tmp_path / "empty")
    with pytest.raises(UserError, match="no such folder"):
        resolve_checkpoint("latest", storage=tmp_path / "missing")


def test_a_run_that_never_saved_is_still_reported_as_such(tmp_path: Path) -> None:
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="no best.pt or last.pt yet"):
        resolve_checkpoint(run)
