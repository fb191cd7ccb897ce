"""demo_data.py writes a synthetic data set in the lab layouts; tiny counts and 32-64 px keep this fast."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import demo_data
from data import demo

REPO = Path(__file__).resolve().parents[1]


def generate(out: Path, *flags: str) -> Path:
    """Run demo_data.main in-process, single worker, tiny leukemia defaults unless ``flags`` say otherwise."""
    counts = [] if "--task" in flags else ["--train", "12", "--valid", "6", "--test", "6", "--image-size", "32"]
    assert demo_data.main(["--out", str(out), "--workers", "1", *counts, *flags]) == 0
    return out


def file_bytes(root: Path, skip: tuple[str, ...] = (demo.MARKER,)) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in skip}


def run_script(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "demo_data.py", "--workers", "1", *flags], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_same_seed_writes_identical_files(tmp_path: Path) -> None:
    first = generate(tmp_path / "a" / "new_dataset", "--seed", "3")
    second = generate(tmp_path / "b" / "new_dataset", "--seed", "3")
    assert file_bytes(first) == file_bytes(second)


def test_two_workers_write_the_same_bytes_as_one(tmp_path: Path) -> None:
    flags = ["--train", "70", "--valid", "2", "--test", "2", "--image-size", "32"]
    one = generate(tmp_path / "a" / "new_dataset", *flags)
    assert demo_data.main(["--out", str(tmp_path / "b" / "new_dataset"), "--workers", "2", *flags]) == 0
    assert file_bytes(one) == file_bytes(tmp_path / "b" / "new_dataset")


def test_different_seed_draws_different_images(tmp_path: Path) -> None:
    first = generate(tmp_path / "a" / "new_dataset", "--seed", "1")
    second = generate(tmp_path / "b" / "new_dataset", "--seed", "2")
    assert (first / "train" / "0.bmp").read_bytes() != (second / "train" / "0.bmp").read_bytes()


def test_train_and_valid_csvs_list_path_and_label_like_the_lab(tmp_path: Path) -> None:
    out = generate(tmp_path / "new_dataset")
    for split, n in (("train", 12), ("valid", 6)):
        table = pd.read_csv(out / f"{split}.csv")
        assert list(table.columns) == ["Path", "label"]
        assert table.Path.tolist() == [f"./new_dataset/{split}/{i}.bmp" for i in range(n)]
        assert set(table.label) <= {0, 1}


def test_paths_resolve_from_the_folder_above_out(tmp_path: Path) -> None:
    out = generate(tmp_path / "new_dataset")
    for path in pd.read_csv(out / "train.csv").Path:
        assert (tmp_path / path).is_file()


def test_the_three_test_csvs_list_the_same_unlabelled_images(tmp_path: Path) -> None:
    out = generate(tmp_path / "new_dataset")
    tables = [pd.read_csv(out / name) for name in demo.LEUKEMIA_TEST_CSVS]
    for table in tables:
        assert list(table.columns) == ["Path"]
        assert table.Path.tolist() == [f"./new_dataset/test/{i}.bmp" for i in range(6)]


def test_hidden_test_labels_match_the_test_csvs(tmp_path: Path) -> None:
    out = generate(tmp_path / "new_dataset")
    labels = pd.read_csv(out / "test_labels.csv")
    assert list(labels.columns) == ["Path", "label"]
    assert labels.Path.tolist() == pd.read_csv(out / "resnet_18_test.csv").Path.tolist()


def test_path_uses_the_out_folder_name(tmp_path: Path) -> None:
    out = generate(tmp_path / "cells")
    assert pd.read_csv(out / "valid.csv").Path[0] == "./cells/valid/0.bmp"


def test_class_balance_follows_cnmc_on_a_moderate_count(tmp_path: Path) -> None:
    out = generate(tmp_path / "new_dataset", "--train", "200", "--image-size", "32")
    blast_share = pd.read_csv(out / "train.csv").label.mean()
    assert blast_share == pytest.approx(0.68, abs=0.02)


def test_cells_are_rgb_bmp_of_the_requested_size_with_black_corners(tmp_path: Path) -> None:
    out = generate(tmp_path / "new_dataset", "--image-size", "48")
    for path in sorted((out / "train").glob("*.bmp")):
        with Image.open(path) as image:
            assert (image.format, image.mode, image.size) == ("BMP", "RGB", (48, 48))
            pixels = np.asarray(image)
        assert not pixels[[0, 0, -1, -1], [0, -1, 0, -1]].any()
        assert pixels[24, 24].any()  # the cell sits in the middle


def test_marker_says_the_data_is_synthetic_and_records_the_settings(tmp_path: Path) -> None:
    out = generate(tmp_path / "new_dataset", "--seed", "5")
    text = (out / demo.MARKER).read_text()
    assert "SYNTHETIC" in text
    assert demo.read_marker(out)["seed"] == 5


def test_refuses_to_write_into_a_folder_without_marker(tmp_path: Path) -> None:
    real = tmp_path / "new_dataset"
    real.mkdir()
    (real / "train.csv").write_text("Path,label\n./new_dataset/train/0.bmp,1\n")
    result = run_script("--out", str(real), "--train", "4", "--valid", "2", "--test", "2", "--force")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "refusing" in result.stderr
    assert file_bytes(real, skip=()) == {"train.csv": b"Path,label\n./new_dataset/train/0.bmp,1\n"}


def test_folder_with_only_hidden_files_counts_as_empty(tmp_path: Path) -> None:
    out = tmp_path / "new_dataset"
    out.mkdir()
    (out / ".gitkeep").touch()
    generate(out)
    assert (out / ".gitkeep").exists() and (out / "train.csv").exists()


def test_same_settings_again_leave_the_set_alone(tmp_path: Path) -> None:
    out = generate(tmp_path / "new_dataset")
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    generate(out)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_other_settings_need_force(tmp_path: Path) -> None:
    out = generate(tmp_path / "new_dataset")
    result = run_script("--out", str(out), "--train", "12", "--valid", "6", "--test", "6",
                        "--image-size", "32", "--seed", "9")
    assert result.returncode == 2 and "--force" in result.stderr


def test_force_replaces_a_demo_set(tmp_path: Path) -> None:
    out = generate(tmp_path / "new_dataset")
    generate(out, "--train", "3", "--force")
    assert len(list((out / "train").glob("*.bmp"))) == 3
    assert len(pd.read_csv(out / "train.csv")) == 3


def test_retina_layout_has_four_headerless_csvs_and_jpegs(tmp_path: Path) -> None:
    out = generate(tmp_path / "retina", "--task", "retinopathy", "--train", "30", "--test", "10",
                   "--image-size", "64")
    names = pd.read_csv(out / "train_img.csv", header=None)[0].tolist()
    labels = pd.read_csv(out / "train_label.csv", header=None)[0].tolist()
    assert len(names) == len(labels) == 30 and len(pd.read_csv(out / "test_img.csv", header=None)) == 10
    assert names[:2] == ["1_left", "1_right"]
    with Image.open(out / "images" / f"{names[0]}.jpeg") as image:
        assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (64, 64))
        corner, middle = np.asarray(image)[:4, :4], np.asarray(image)[28:36, 28:36]
    assert corner.max() < 20 < middle.mean()  # black outside the fundus disk (up to JPEG ringing)


def test_retina_train_split_holds_every_grade(tmp_path: Path) -> None:
    out = generate(tmp_path / "retina", "--task", "retinopathy", "--train", "30", "--test", "10",
                   "--image-size", "32")
    labels = pd.read_csv(out / "train_label.csv", header=None)[0]
    assert sorted(set(labels)) == [0, 1, 2, 3, 4]


def test_default_retina_counts_keep_a_handful_of_each_grade() -> None:
    for n in demo.DEFAULT_COUNTS["retinopathy"][::2]:
        counts = demo.class_counts(n, demo.RETINOPATHY_FRACTIONS, 5)
        assert sum(counts) == n and min(counts) >= 5 and counts[0] == max(counts)


def test_valid_flag_is_refused_for_retinopathy(tmp_path: Path) -> None:
    result = run_script("--task", "retinopathy", "--out", str(tmp_path / "r"), "--valid", "5")
    assert result.returncode == 2 and not (tmp_path / "r").exists()


def test_the_samples_figure_is_drawn_at_readme_width_on_white(tmp_path: Path) -> None:
    from data.demo.samples import save_samples_figure

    save_samples_figure(tmp_path / "samples.png", size=32)
    with Image.open(tmp_path / "samples.png") as png:
        pixels = np.asarray(png.convert("RGB"))
    assert pixels.shape[1] >= 900 and (pixels[0, 0] == 255).all()  # captions: black on white, not grey on grey
    assert (pixels.max(axis=2) < 60).mean() > 0.01
