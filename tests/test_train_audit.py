"""train.py and the data audit: every unreadable image named at once, --skip-unreadable, <run>/audit.json."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

import train as train_script
from conftest import write_lab_dataset
from common.errors import run_cli
from core.reporting.report import clinical_lines, describe_run

FAST = ["--image-size", "32", "-b", "4", "-e", "1", "--workers", "0"]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_lab_dataset(tmp_path, n_train=12, n_valid=6, n_test=2, size=32)


def break_two(data: Path) -> list[Path]:
    truncated, not_image = data / "train" / "4.bmp", data / "valid" / "1.bmp"
    truncated.write_bytes(truncated.read_bytes()[:300])
    not_image.write_text("Path,label\nnot a picture\n")
    return [truncated, not_image]


def train(data: Path, tmp_path: Path, *extra: str) -> int:
    return run_cli(train_script.main, ["--data", str(data), "--out", str(tmp_path / "out"), "--name", "run", *FAST,
                                       *extra])


def test_train_names_every_unreadable_image_in_one_message(capsys, data: Path, tmp_path: Path) -> None:
    broken = break_two(data)
    assert train(data, tmp_path) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert "2 images cannot be decoded" in errors[0] and "--skip-unreadable" in errors[0]
    assert all(str(path) in errors[0] for path in broken)


def test_skip_unreadable_trains_without_them_and_lists_them(data: Path, tmp_path: Path) -> None:
    broken = break_two(data)
    assert train(data, tmp_path, "--skip-unreadable") == 0
    run = tmp_path / "out" / "run"
    listed = pd.read_csv(run / "unreadable.csv")
    assert sorted(listed["path"]) == sorted(str(p) for p in broken) and listed["error"].str.len().min() > 0
    audit = json.loads((run / "audit.json").read_text())
    assert audit["images"] == 12 + 6 - 2 and len(audit["unreadable"]) == 2


def test_train_audit_reports_an_image_in_train_and_valid(capsys, data: Path, tmp_path: Path) -> None:
    (data / "valid" / "0.bmp").write_bytes((data / "train" / "3.bmp").read_bytes())  # both normal cells
    assert train(data, tmp_path) == 0
    assert "audit: 1 exact copies across splits; 0 label conflicts" in capsys.readouterr().out
    run = tmp_path / "out" / "run"
    (group,) = json.loads((run / "audit.json").read_text())["duplicates"]
    assert group["across_splits"] and {Path(i["path"]).name for i in group["items"]} == {"3.bmp", "0.bmp"}
    assert not (run / "unreadable.csv").exists()
    assert any("1 exact copies across splits" in line for line in clinical_lines(describe_run(run)))


def test_a_clean_start_decodes_nothing_twice(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert train(data, tmp_path) == 0
    import data.scan as scan

    monkeypatch.setattr(scan, "find_unreadable", lambda *a, **k: pytest.fail("checked the images again"))
    assert train(data, tmp_path, "--name", "again") == 0


def test_a_run_trained_without_unreadable_images_resumes_without_them(data: Path, tmp_path: Path) -> None:
    break_two(data)
    assert train(data, tmp_path, "--skip-unreadable") == 0
    run = tmp_path / "out" / "run"
    assert run_cli(train_script.main, ["--resume", str(run), "-e", "2", "--out", str(tmp_path / "out")]) == 0
    assert json.loads((run / "audit.json").read_text())["images"] == 12 + 6 - 2  # its own lists, as saved
