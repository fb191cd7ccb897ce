"""audit.py: every planted problem found (and little else), the exit status, the JSON shape, the band search."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import audit as audit_script
from conftest import write_lab_dataset
from common.errors import run_cli
from data.demo.cells import render_cell, sample_cell
from data.phash import candidate_pairs, probes

SIZE = 64  # a resized copy still has texture to compare at 32 x 32


def write_cell_set(root: Path) -> Path:
    """A lab-layout set of drawn demo cells (each its own texture, like real cells; the conftest's
    plain disks differ only by pixel noise, which any resized copy loses)."""
    data = write_lab_dataset(root, n_train=40, n_valid=12, n_test=6, size=SIZE)
    rng = np.random.default_rng(1)
    for path in sorted(data.glob("*/*.bmp"), key=str):
        label = int(int(path.stem) % 3 != 0)  # write_lab_dataset's labels
        Image.fromarray(render_cell(sample_cell(rng, label), SIZE, rng)).save(path)
    return data


def plant_problems(data: Path) -> dict[str, list[str]]:
    """Damage a clean lab set the ways the issue lists; returns what was planted, by kind (file names)."""
    train, valid = data / "train", data / "valid"
    # copies keep their label (write_lab_dataset: image i is a normal cell when i % 3 == 0)
    (valid / "0.bmp").write_bytes((train / "3.bmp").read_bytes())  # the same file in train and valid
    with Image.open(train / "1.bmp") as img:
        img.resize((48, 48), Image.Resampling.LANCZOS).save(valid / "1.png")  # resized, re-encoded
    with Image.open(train / "2.bmp") as img:
        brighter = np.clip(np.asarray(img).astype(int) + 25, 0, 255).astype(np.uint8)
        Image.fromarray(brighter).save(valid / "2.png")  # brighter, re-encoded
    (train / "6.bmp").write_bytes((train / "6.bmp").read_bytes()[:300])  # truncated
    (train / "7.bmp").write_text("Path,label\nnot a picture\n")
    csv = data / "valid.csv"
    csv.write_text(csv.read_text().replace("valid/1.bmp", "valid/1.png").replace("valid/2.bmp", "valid/2.png"))
    csv = data / "train.csv"
    csv.write_text(csv.read_text() + "./new_dataset/train/5.bmp,0\n./new_dataset/train/5.bmp,1\n")
    return {"unreadable": ["6.bmp", "7.bmp"], "exact": ["3.bmp"], "near": ["1.bmp", "2.bmp"], "conflict": ["5.bmp"]}


def run_audit(data: Path, tmp_path: Path, *extra: str) -> tuple[int, dict]:
    out = tmp_path / "audit.json"
    status = run_cli(audit_script.main, ["--data", str(data), "--json", str(out), "--workers", "1",
                                         "--cache-dir", str(tmp_path / "cache"),
                                         "--montage", str(tmp_path / "duplicates.png"), *extra])
    return status, json.loads(out.read_text())


@pytest.fixture
def planted(tmp_path: Path) -> tuple[Path, dict[str, list[str]]]:
    data = write_cell_set(tmp_path)
    return data, plant_problems(data)


def names(items: list[dict]) -> set[str]:
    return {Path(i["path"]).name for i in items}


def test_audit_finds_every_planted_problem_and_exits_1(planted, tmp_path: Path) -> None:
    data, plan = planted
    status, report = run_audit(data, tmp_path)
    assert status == 1
    assert names(report["unreadable"]) == set(plan["unreadable"])
    leaks = [g for g in report["duplicates"] if g["across_splits"]]
    exact = [names(g["items"]) for g in leaks if g["kind"] == "exact"]
    near = [g for g in leaks if g["kind"] == "near"]
    assert exact == [{"3.bmp", "0.bmp"}]
    for planted_name in plan["near"]:
        assert any(planted_name in names(g["items"]) and {"train", "valid"} == set(g["splits"]) for g in near)
    assert len([g for g in report["duplicates"] if g["kind"] == "near"]) <= len(plan["near"]) + 2
    (conflict,) = report["label_conflicts"]
    assert names(conflict["items"]) == {"5.bmp"} and {i["label"] for i in conflict["items"]} == {"normal", "blast"}
    assert (tmp_path / "duplicates.png").stat().st_size > 0


def test_audit_json_has_the_documented_shape(planted, tmp_path: Path) -> None:
    data, _ = planted
    _, report = run_audit(data, tmp_path)
    assert report["images"] == 40 + 12 + 6
    assert set(report["unreadable"][0]) >= {"path", "error"} and Path(report["unreadable"][0]["path"]).is_absolute()
    group = report["duplicates"][0]
    assert group["kind"] in ("exact", "near") and set(group["items"][0]) == {"path", "split", "label"}
    assert report["patient_overlap"] == {}  # lab names (0.bmp) carry no patient id
    train = report["splits"]["train"]
    assert sum(train["classes"].values()) == 42 and train["modes"] == {"RGB": 40}
    assert train["sizes"] == {f"{SIZE}x{SIZE}": 40} and train["bit_depths"] == {"8": 40}


def test_a_clean_set_exits_0(tmp_path: Path) -> None:
    status, report = run_audit(write_cell_set(tmp_path), tmp_path)
    assert status == 0, report
    assert report["problems"] == 0 and report["duplicates"] == []


def test_test_lists_of_the_same_images_in_any_order_are_audited_once(tmp_path: Path) -> None:
    data = write_cell_set(tmp_path)
    csv = data / "resnet_50_test.csv"
    header, *rows = csv.read_text().splitlines()
    csv.write_text("\n".join([header, *reversed(rows)]) + "\n")
    status, report = run_audit(data, tmp_path)
    assert status == 0 and report["duplicates"] == []
    assert set(report["same_lists"]) == {"resnet_18_test", "resnet_50_test"}


def test_a_second_audit_reads_the_remembered_scan(planted, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data, _ = planted
    _, first = run_audit(data, tmp_path)
    import data.scan as scan

    monkeypatch.setattr(scan, "scan_file", lambda path: pytest.fail(f"decoded {path} again"))
    _, second = run_audit(data, tmp_path)
    assert second["duplicates"] == first["duplicates"]


def test_patients_in_two_splits_fail_the_audit(tmp_path: Path) -> None:
    root = tmp_path / "folders"
    rng = np.random.default_rng(0)
    for split, subject in (("train", "H10"), ("train", "H11"), ("valid", "H10")):
        for cls in ("all", "hem"):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for k in range(2):
                pixels = rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"UID_{subject}_{k}_1_{cls}.bmp")
    status, report = run_audit(root, tmp_path)
    assert status == 1 and report["patient_overlap"] == {"train/valid": ["H10"]}


def test_a_usage_error_exits_2(tmp_path: Path) -> None:
    assert run_cli(audit_script.main, ["--data", str(tmp_path / "nowhere")]) == 2


def test_probes_find_a_copy_whose_differences_are_weak_bits() -> None:
    hashes = np.array([0, 0b11111], dtype=np.uint64)  # 5 bits apart: beyond the plain 3-bit search
    weak = np.array([[63, 62, 61], [0, 1, 2]], dtype=np.uint8)  # bit i is 1 << (63 - i): the low bits
    assert len(candidate_pairs(hashes, None)) == 0
    assert candidate_pairs(hashes, weak).tolist() == [[0, 1]]
    assert probes(hashes, weak).shape == (2, 8)


def test_the_band_search_equals_brute_force() -> None:
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2 ** 63, 1000, dtype=np.int64).astype(np.uint64)
    weak = rng.integers(0, 64, (1000, 3)).astype(np.uint8)
    for k in range(60):  # plant pairs 0-5 bits apart
        flips = rng.choice(64, size=k % 6, replace=False)
        hashes[500 + k] = hashes[k] ^ np.uint64(sum(1 << int(b) for b in flips))
        weak[k] = 63 - flips[:3] if k % 2 else weak[k]  # half of them differ in weak bits
    ignored = probes(hashes, weak)[:, -1] ^ hashes
    i, j = np.triu_indices(len(hashes), 1)
    differ = hashes[i] ^ hashes[j]
    plain = np.bitwise_count(differ) <= 3
    masked = plain | (np.bitwise_count(differ & ~ignored[i]) <= 3) | (np.bitwise_count(differ & ~ignored[j]) <= 3)
    assert candidate_pairs(hashes).tolist() == np.stack([i, j], 1)[plain].tolist()
    assert candidate_pairs(hashes, weak).tolist() == np.stack([i, j], 1)[masked].tolist()
    assert masked.sum() > plain.sum() >= 40
