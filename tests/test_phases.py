"""Per-phase timing: inner phases are taken out of outer ones, and everything adds up to the wall time."""
from __future__ import annotations

import time

import pytest

from core.training.phases import Phases


def test_phases_add_up_to_the_total_and_nested_time_is_counted_once() -> None:
    phases = Phases()
    with phases.time("train steps"):
        time.sleep(0.05)
        with phases.time("checkpoints"):
            time.sleep(0.05)
    time.sleep(0.02)
    s = phases.summary()
    assert s["checkpoints"] == pytest.approx(0.05, abs=0.03)
    assert s["train steps"] == pytest.approx(0.05, abs=0.03)  # not 0.10: the checkpoint is not counted twice
    assert s["other"] >= 0.015
    assert sum(v for k, v in s.items() if k != "total") == pytest.approx(s["total"], abs=0.005)


def test_the_line_names_each_phase_with_its_share() -> None:
    phases = Phases()
    with phases.time("validation"):
        time.sleep(0.01)
    line = phases.line()
    assert line.startswith("time ") and "validation" in line and "%" in line and "other" in line


def test_sync_runs_at_both_ends_of_a_phase() -> None:
    calls = []
    phases = Phases(sync=lambda: calls.append(1))
    with phases.time("setup"):
        pass
    assert len(calls) == 2


def test_a_training_run_writes_its_timing_and_a_weights_only_best_pt(lab_data, tmp_path) -> None:
    import json

    import torch

    import train

    assert train.main(["--data", str(lab_data), "--out", str(tmp_path), "--name", "r", "--image-size", "32",
                       "-b", "8", "-e", "2", "--workers", "0", "--device", "cpu"]) == 0
    timing = json.loads((tmp_path / "r" / "timing.json").read_text())
    assert {"setup", "train steps", "validation", "checkpoints", "other", "total"} <= set(timing)
    assert sum(v for k, v in timing.items() if k not in ("total", "sessions")) == pytest.approx(timing["total"], rel=0.02)
    best = torch.load(tmp_path / "r" / "best.pt", weights_only=True)
    last = torch.load(tmp_path / "r" / "last.pt", weights_only=True)
    assert not {"optimizer", "scaler", "rng", "sums"} & set(best)  # last.pt keeps the training state
    assert {"optimizer", "scaler", "rng"} <= set(last)
    assert (tmp_path / "r" / "best.pt").stat().st_size < 0.6 * (tmp_path / "r" / "last.pt").stat().st_size
