"""bench.py end to end at its tiny --quick sizes; speed itself is not asserted (machines differ)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_quick_train_and_memory_sections_write_positive_numbers_to_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny inputs; a second thread only contends on a shared CPU
    subprocess.run([sys.executable, "bench.py", "--quick", "--device", "cpu", "--sections", "train,memory",
                    "--json", str(out), "--work-dir", str(tmp_path)], cwd=ROOT, env=env, check=True,
                   capture_output=True, text=True, timeout=120)

    report = json.loads(out.read_text())
    machine = report["machine"]
    expected = {"device", "device_name", "torch", "threads", "date", "load_average_start", "load_average_end"}
    assert expected <= set(machine)
    assert machine["threads"] >= 1
    assert "models" not in report and "eval" not in report
    (train,) = report["train"]["rows"]
    assert train["name"] == "resnet18"
    for key in ("images_per_s", "epoch_s", "lab_epoch_s", "pipeline_s"):
        assert train[key] > 0, key
    assert 0 < train["pipeline_fraction"] < 1
    (memory,) = report["memory"]["rows"]
    assert memory["peak_rss_mib"] > 0 and memory["cuda_max_allocated_mib"] is None
    verdicts = {row["target"]: row["verdict"] for row in report["targets"]}
    assert verdicts["ResNet18 training >= 10,000 img/s (1x H100, 224 px)"] == "not measured (no GPU)"
    assert [p.name for p in tmp_path.iterdir()] == ["bench.json"]  # the demo set and caches are cleaned up


def test_quick_lab_section_splits_a_real_run_into_phases_that_add_up(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "bench.py", "--quick", "--device", "cpu", "--sections", "lab",
                    "--json", str(out), "--work-dir", str(tmp_path)], cwd=ROOT, env=env, check=True,
                   capture_output=True, text=True, timeout=120)
    (row,) = json.loads(out.read_text())["lab"]["rows"]
    phases = [row[p] for p in ("setup", "train steps", "validation", "checkpoints", "other")]
    assert all(p >= 0 for p in phases) and row["train steps"] > 0 and row["checkpoints"] > 0
    assert sum(phases) + row.get("history", 0) == pytest.approx(row["total"], rel=0.02)
    assert row["outside_steps_share"] == pytest.approx(1 - row["train steps"] / row["total"], abs=1e-3)


def test_quick_audit_section_times_the_audit_and_the_hash_search(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, "bench.py", "--quick", "--device", "cpu", "--sections", "audit",
                    "--json", str(out), "--work-dir", str(tmp_path)], cwd=ROOT, check=True,
                   capture_output=True, text=True, timeout=120)
    (row,) = json.loads(out.read_text())["audit"]["rows"]
    assert row["images"] == 48 and row["cold_s"] > 0 and row["warm_s"] >= 0
    assert row["duplicate_groups"] == 0  # every synthetic cell is its own
    assert [s["hashes"] for s in row["search"]] == [500, 5000]
    assert all(s["planted_found"] == 1.0 for s in row["search"])
    assert [p.name for p in tmp_path.iterdir()] == ["bench.json"]
