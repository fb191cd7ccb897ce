"""Every user mistake: exit status 2 and one line naming the problem, never a traceback.

One test per row of the README's "When something is wrong" table.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import pytest
from PIL import Image

import eval as eval_script
import plot as plot_script
import train as train_script
from conftest import ROOT, write_lab_dataset
from common.errors import run_cli

FAST = ["--image-size", "32", "-b", "4", "-e", "1", "--workers", "0"]


def fails(capsys: pytest.CaptureFixture, main, argv: list[str], *words: str) -> str:
    """Run a script's main as its __main__ would; assert exit 2 and one 'error:' line with ``words``."""
    assert run_cli(main, argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word.lower() in errors[0].lower(), errors[0]
    return errors[0]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_lab_dataset(tmp_path, n_train=12, n_valid=4, n_test=2, size=32)


def train_fails(capsys, data: Path, tmp_path: Path, *words: str, extra: tuple[str, ...] = ()) -> str:
    return fails(capsys, train_script.main, ["--data", str(data), "--out", str(tmp_path / "out"), *FAST, *extra],
                 *words)


def test_missing_data_folder(capsys, tmp_path: Path) -> None:
    train_fails(capsys, tmp_path / "nowhere", tmp_path, "nowhere")


def test_unknown_layout(capsys, tmp_path: Path) -> None:
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("hello")
    train_fails(capsys, tmp_path / "stuff", tmp_path, "train.csv")


def test_csv_without_the_label_column(capsys, data: Path, tmp_path: Path) -> None:
    csv = data / "train.csv"
    csv.write_text(csv.read_text().replace("Path,label", "Path,diagnosis"))
    train_fails(capsys, data, tmp_path, "train.csv", "label")


def test_unknown_label(capsys, data: Path, tmp_path: Path) -> None:
    csv = data / "train.csv"
    lines = csv.read_text().splitlines()
    lines[3] = lines[3].rsplit(",", 1)[0] + ",7"
    csv.write_text("\n".join(lines) + "\n")
    train_fails(capsys, data, tmp_path, "train.csv", "7")


def test_missing_image(capsys, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (data / "train" / "5.bmp").unlink()
    # The same relative path exists in the working directory: it must not be picked up instead.
    decoy = tmp_path / "cwd" / "new_dataset" / "train"
    decoy.mkdir(parents=True)
    (data / "train" / "6.bmp").rename(decoy / "5.bmp")
    monkeypatch.chdir(tmp_path / "cwd")
    train_fails(capsys, data, tmp_path, "train.csv line 7", "5.bmp")


def test_truncated_image(capsys, data: Path, tmp_path: Path) -> None:
    path = data / "train" / "4.bmp"
    path.write_bytes(path.read_bytes()[:300])
    train_fails(capsys, data, tmp_path, "4.bmp")


def test_corrupt_image(capsys, data: Path, tmp_path: Path) -> None:
    (data / "train" / "6.bmp").write_bytes(np.random.default_rng(0).bytes(5000))
    train_fails(capsys, data, tmp_path, "6.bmp")


def test_non_image_file(capsys, data: Path, tmp_path: Path) -> None:
    (data / "train" / "7.bmp").write_text("Path,label\nthis is a CSV, not a picture\n")
    train_fails(capsys, data, tmp_path, "7.bmp")


def test_grayscale_and_rgba_images_are_accepted(data: Path, tmp_path: Path) -> None:
    for i, mode in ((1, "L"), (2, "RGBA"), (3, "P")):
        path = data / "train" / f"{i}.bmp"
        img = Image.open(path).convert(mode)
        img.save(path.with_suffix(".png"))
        csv = data / "train.csv"
        csv.write_text(csv.read_text().replace(f"/train/{i}.bmp", f"/train/{i}.png"))
    assert train_script.main(["--data", str(data), "--out", str(tmp_path / "out"), *FAST]) == 0


def test_batch_larger_than_the_training_set(capsys, data: Path, tmp_path: Path) -> None:
    train_fails(capsys, data, tmp_path, "-b 64", "12 images", extra=("-b", "64"))


@pytest.mark.parametrize("epochs", ["0", "-3"])
def test_zero_or_negative_epochs(capsys, data: Path, tmp_path: Path, epochs: str) -> None:
    train_fails(capsys, data, tmp_path, "--epochs", extra=("-e", epochs))


def test_output_folder_that_cannot_be_written(capsys, data: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    fails(capsys, train_script.main, ["--data", str(data), "--out", str(blocker / "storage"), *FAST],
          "cannot write", "--out")


def test_eval_of_a_missing_checkpoint(capsys, tmp_path: Path) -> None:
    fails(capsys, eval_script.main, ["-m", str(tmp_path / "none.pt")], "not found")


@pytest.mark.parametrize("content", [b"definitely not torch", b"junk", b"", b"PK\x03\x04" + bytes(100)])
def test_eval_of_a_file_that_is_not_a_checkpoint(capsys, tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "weights.pt"
    path.write_bytes(content)
    fails(capsys, eval_script.main, ["-m", str(path)], "weights.pt")


def test_plot_of_a_folder_without_runs(capsys, tmp_path: Path) -> None:
    fails(capsys, plot_script.main, ["-f", str(tmp_path)], "no training run")


def test_debug_flag_shows_the_traceback(capsys, tmp_path: Path) -> None:
    assert run_cli(train_script.main, ["--data", str(tmp_path / "nowhere"), "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_script_exits_2_from_the_shell(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "train.py", "--data", str(tmp_path / "nowhere")],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith("error:") and "Traceback" not in result.stderr


def test_out_of_memory_suggests_smaller_batch_amp_or_size(capsys, data: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from core import engine

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(engine, "train_step", out_of_memory)
    line = train_fails(capsys, data, tmp_path, "out of memory", "-b (e.g. 2)", "--amp", "--image-size")
    assert "batch size 4" in line


def test_checkpoint_for_another_class_count_names_both(capsys, data: Path, tmp_path: Path) -> None:
    from models import build_model

    path = tmp_path / "five.pt"
    torch.save({"arch": "resnet18", "num_classes": 5, "model": build_model("resnet18", 5).state_dict(),
                "classes": ["0", "1", "2", "3", "4"], "config": {},
                "preprocess": {"image_size": 32, "crop": 1.0, "mode": "center", "mean": [0.5] * 3, "std": [0.2] * 3}},
               path)
    line = fails(capsys, eval_script.main, ["-m", str(path), "--data", str(data)], "5 classes", "has 2")
    assert "five.pt" in line
