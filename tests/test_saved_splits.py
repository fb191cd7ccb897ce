"""A run is evaluated and resumed on the train/valid lists it used (splits.csv), whatever was added since."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import eval as eval_script
import train as train_script
from conftest import draw_cell, write_lab_dataset
from core.evaluation.evaluate import EvalSettings, write_split
from data import open_data, restore_splits, splits_csv
from data.sources import DataError, Split

TINY = ["--image-size", "32", "-b", "8", "--seed", "0", "--workers", "0", "--device", "cpu", "--no-cache"]


def write_csv_data(root: Path, n: int) -> Path:
    """root/labels.csv (path,label) over n 32 px cells; adding rows re-shuffles a re-made split."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        draw_cell(rng, 32, i % 2).save(root / "img" / f"{i}.png")
        rows.append(f"img/{i}.png,{i % 2}")
    (root / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    return root


def change_data(root: Path) -> None:
    """8 images added, the first listed removed, image 1 rewritten and image 2 relabelled."""
    write_csv_data(root / "more", 8)
    frame = pd.read_csv(root / "labels.csv")
    extra = pd.DataFrame({"path": [f"more/img/{i}.png" for i in range(8)], "label": [i % 2 for i in range(8)]})
    frame = pd.concat([frame.iloc[1:], extra], ignore_index=True)
    frame.loc[frame["path"] == "img/2.png", "label"] = 1  # was 0
    frame.to_csv(root / "labels.csv", index=False)
    os.utime(root / "img" / "1.png", ns=(1, 1))


def test_saved_lists_are_used_and_the_change_is_counted(tmp_path: Path) -> None:
    root = write_csv_data(tmp_path / "data", 24)
    run = tmp_path / "run"
    run.mkdir()
    before = open_data(root)
    (run / "splits.csv").write_text(splits_csv(before))
    change_data(root)
    restored = restore_splits(open_data(root), run)
    assert (restored.change.added, restored.change.removed, restored.change.modified,
            restored.change.relabelled) == (8, 1, 1, 1)
    gone = root / "img" / "0.png"
    assert restored.source.splits["valid"].paths == tuple(p for p in before.splits["valid"].paths if p != gone)
    assert "8 added (left out), 1 removed, 1 modified, 1 relabelled" in restored.note


def test_a_run_without_splits_csv_re_splits_with_a_note(tmp_path: Path) -> None:
    root = write_csv_data(tmp_path / "data", 12)
    restored = restore_splits(open_data(root), tmp_path)
    assert not restored.change and "has no splits.csv" in restored.note
    assert restored.source.splits["valid"].paths == open_data(root).splits["valid"].paths


@pytest.fixture(scope="module")
def changed_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data, run): a one-epoch run, after which the data set changed (change_data)."""
    root = write_csv_data(tmp_path_factory.mktemp("data"), 24)
    out = tmp_path_factory.mktemp("storage")
    assert train_script.main(["--data", str(root), "--out", str(out), "--name", "r", "-e", "1", *TINY]) == 0
    change_data(root)
    return root, out / "r"


def test_eval_after_a_data_change_uses_the_runs_own_valid_list(changed_run, tmp_path: Path, capsys) -> None:
    root, run = changed_run
    saved = pd.read_csv(run / "splits.csv")
    assert list(saved.columns[:3]) == ["split", "path", "label"]
    assert eval_script.main(["-m", str(run), "--split", "valid", "-c", "--bootstrap", "0",
                             "--output", str(tmp_path)]) == 0
    assert "data: the data changed since training: 8 added (left out), 1 removed" in capsys.readouterr().out
    valid = saved[saved["split"] == "valid"]["path"]
    kept = [Path(p).relative_to(root).as_posix() for p in valid if p != str(root / "img" / "0.png")]
    assert pd.read_csv(tmp_path / "valid_probs.csv")["ID"].tolist() == kept


def test_resume_after_a_data_change_is_refused_in_one_line(changed_run, tmp_path: Path) -> None:
    _, run = changed_run
    copy = shutil.copytree(run, tmp_path / "r")
    with pytest.raises(DataError, match="--accept-data-change") as caught:
        train_script.main(["--resume", str(copy), "-e", "2"])
    assert "\n" not in str(caught.value) and "8 added" in str(caught.value)


def test_resume_with_accept_data_change_continues_on_the_saved_lists(changed_run, tmp_path: Path) -> None:
    _, run = changed_run
    copy = shutil.copytree(run, tmp_path / "r")
    assert train_script.main(["--resume", str(copy), "-e", "2", "--accept-data-change"]) == 0
    assert len(pd.read_csv(copy / "history.csv")) == 2
    assert set(pd.read_csv(copy / "splits.csv")["path"]) < set(pd.read_csv(run / "splits.csv")["path"])


def test_an_ensemble_of_runs_on_other_lists_is_noted(tmp_path: Path) -> None:
    root = write_csv_data(tmp_path / "data", 12)
    for name, seed in (("a", 0), ("b", 1)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "splits.csv").write_text(splits_csv(open_data(root, seed=seed)))
    source = open_data(root)
    assert restore_splits(source, tmp_path / "a", [tmp_path / "a"]).note == ""
    assert "b used other train/valid lists than a" in restore_splits(source, tmp_path / "a", [tmp_path / "b"]).note


def test_test_images_the_run_trained_on_are_counted(tmp_path: Path) -> None:
    data = write_lab_dataset(tmp_path / "lab", n_train=16, n_valid=8, n_test=6, size=32)
    run = tmp_path / "run"
    run.mkdir()
    (run / "splits.csv").write_text(splits_csv(open_data(data)))
    assert restore_splits(open_data(data), run).trained_on == {}
    test_csv = data / "resnet_18_test.csv"  # changed after training: two training images added
    test_csv.write_text(test_csv.read_text() + "./new_dataset/train/0.bmp\n./new_dataset/train/1.bmp\n")
    restored = restore_splits(open_data(data), run)
    assert restored.trained_on == {"resnet_18_test": 2}
    assert "WARNING: 2 of the 8 images of resnet_18_test are in the training list" in restored.note


def test_eval_flags_a_test_list_holding_training_images(tmp_path: Path, capsys) -> None:
    data = write_lab_dataset(tmp_path / "lab", n_train=16, n_valid=8, n_test=6, size=32)
    out = tmp_path / "storage"
    assert train_script.main(["--data", str(data), "--out", str(out), "--name", "r", "-e", "1", *TINY]) == 0
    test_csv = data / "resnet_18_test.csv"
    test_csv.write_text(test_csv.read_text() + "./new_dataset/train/0.bmp\n")
    capsys.readouterr()
    assert eval_script.main(["-m", str(out / "r"), "--split", "resnet_18_test", "--bootstrap", "0",
                             "--output", str(tmp_path / "eval")]) == 0
    assert "WARNING: 1 of the 7 images of resnet_18_test are in the training list" in capsys.readouterr().out


def test_a_labelled_split_holding_training_images_records_it_in_its_metrics(tmp_path: Path, capsys) -> None:
    labels = np.array([0, 1] * 10)
    probs = np.eye(2)[labels] * 0.8 + 0.1
    split = Split("test", tuple(Path(f"{i}.png") for i in range(20)), tuple(labels.tolist()),
                  tuple(f"{i}.png" for i in range(20)), "a test")
    write_split(split, probs, labels, EvalSettings(tmp_path, ("normal", "blast"), "run", "ResNet18", resamples=0,
                                                   trained_on={"test": 3}))
    assert json.loads((tmp_path / "test_metrics.json").read_text())["trained_on_images"] == 3
    assert "WARNING: 3 of these images are in the training list" in capsys.readouterr().out
