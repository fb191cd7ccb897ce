"""k-fold assignment: disjoint folds covering every pooled image once, patients kept whole, classes balanced."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import write_lab_dataset
from data import open_data
from data.folds import assign_folds, fold_source, read_folds
from data.sources import DataError


def write_kaggle_patients(parent: Path, n_all: int = 14, n_hem: int = 7, seed: int = 0, size: int = 8) -> Path:
    """C-NMC with 3 training folds (each patient, ALL or HEM, has 2-6 cells) and 4 test images of each phase."""
    rng = np.random.default_rng(seed)
    base = parent / "C-NMC_Leukemia" / "training_data"
    patients = [(f"{i}", "all") for i in range(n_all)] + [(f"H{i}", "hem") for i in range(n_hem)]
    pixel = Image.new("RGB", (size, size), (120, 80, 160))
    for n, (pid, kind) in enumerate(patients):
        folder = base / f"fold_{n % 3}" / kind
        folder.mkdir(parents=True, exist_ok=True)
        for cell in range(int(rng.integers(2, 7))):
            pixel.save(folder / f"UID_{pid}_{cell}_1_{kind}.bmp")
    prelim = base.parent / "validation_data" / "C-NMC_test_prelim_phase_data"
    final = base.parent / "testing_data" / "C-NMC_test_final_phase_data"
    for folder in (prelim, final):
        folder.mkdir(parents=True)
        for i in range(1, 5):
            pixel.save(folder / f"{i}.bmp")
    (prelim.parent / f"{prelim.name}_labels.csv").write_text(
        "Patient_ID,new_names,labels\n" + "".join(f"UID_X_{i}_1_all.bmp,{i}.bmp,{i % 2}\n" for i in range(1, 5)))
    return parent


@pytest.fixture(scope="module")
def kaggle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_kaggle_patients(tmp_path_factory.mktemp("cv-kaggle"))


@pytest.mark.parametrize("k", [2, 3, 5])
def test_folds_are_disjoint_and_cover_every_pooled_image_once(kaggle: Path, k: int) -> None:
    source = open_data(kaggle)
    table = assign_folds(source, k, seed=0)
    pooled = [str(p) for name in ("train", "valid") for p in source.splits[name].paths]
    assert sorted(table["path"]) == sorted(pooled)
    assert table["path"].is_unique
    assert sorted(table["fold"].unique()) == list(range(k))
    valids = [set(fold_source(source, table, f).splits["valid"].paths) for f in range(k)]
    assert sum(len(v) for v in valids) == len(pooled)
    assert set().union(*valids) == {Path(p) for p in pooled}


@pytest.mark.parametrize("k", [2, 3, 5])
def test_no_patient_appears_in_two_folds(kaggle: Path, k: int) -> None:
    table = assign_folds(open_data(kaggle), k, seed=1)
    assert (table["patient"] != "").all()
    assert table.groupby("patient")["fold"].nunique().max() == 1


def test_each_fold_keeps_the_class_proportions_within_5_points(tmp_path: Path) -> None:
    data = write_kaggle_patients(tmp_path, n_all=40, n_hem=20)
    table = assign_folds(open_data(data), 3, seed=0)
    whole = table["label"].mean()
    for fold, rows in table.groupby("fold"):
        assert abs(rows["label"].mean() - whole) <= 0.05, f"fold {fold}: {rows['label'].mean():.3f} vs {whole:.3f}"


def test_fold_train_and_valid_are_complementary_and_tests_kept(kaggle: Path) -> None:
    source = open_data(kaggle)
    table = assign_folds(source, 3, seed=0)
    fold = fold_source(source, table, 1)
    train, valid = set(fold.splits["train"].paths), set(fold.splits["valid"].paths)
    assert not train & valid
    assert len(train) + len(valid) == len(table)
    assert source.test_splits and all(fold.splits[n] is source.splits[n] for n in source.test_splits)


def test_split_fold_uses_the_kaggle_folders_as_folds(kaggle: Path) -> None:
    table = assign_folds(open_data(kaggle, split="fold"), 3, seed=0, split="fold")
    folder = table["path"].map(lambda p: Path(p).parent.parent.name)
    assert (folder == table["fold"].map(lambda f: f"fold_{f}")).all()


def test_split_fold_with_another_k_names_the_fix(kaggle: Path) -> None:
    with pytest.raises(DataError, match="pass --folds 3"):
        assign_folds(open_data(kaggle, split="fold"), 4, seed=0, split="fold")


def test_more_folds_than_patients_is_refused(kaggle: Path) -> None:
    with pytest.raises(DataError, match="needs at least 30 patients; the data has 21"):
        assign_folds(open_data(kaggle), 30, seed=0)


def test_without_patient_ids_each_image_is_its_own_group(tmp_path: Path) -> None:
    source = open_data(write_lab_dataset(tmp_path, n_train=48, n_valid=12, n_test=1, size=16))
    table = assign_folds(source, 4, seed=0)
    assert (table["patient"] == "").all()
    assert len(table) == len(source.splits["train"]) + len(source.splits["valid"])
    assert table.groupby("fold").size().min() >= len(table) // 4 - 1
    whole = table["label"].mean()
    assert all(abs(rows["label"].mean() - whole) <= 0.05 for _, rows in table.groupby("fold"))


def test_the_assignment_reads_back_the_same(kaggle: Path, tmp_path: Path) -> None:
    table = assign_folds(open_data(kaggle), 3, seed=0)
    table.to_csv(tmp_path / "folds.csv", index=False)
    back = read_folds(tmp_path / "folds.csv")
    assert back.equals(table.reset_index(drop=True))


def test_retina_folds_keep_both_eyes_of_a_patient_together(tmp_path: Path) -> None:
    from test_retina import make_retina_lab

    table = assign_folds(open_data(make_retina_lab(tmp_path)), 3, seed=0)
    assert len(table) == 20 and (table["patient"] != "").all()
    assert table.groupby("patient")["fold"].nunique().max() == 1
    assert table.groupby("patient").size().eq(2).all()


def test_folds_keep_named_patients_whole_and_group_the_other_images_by_image(kaggle: Path) -> None:
    source = open_data(kaggle)
    train = source.splits["train"]
    renamed = train.paths[0].with_name("no_patient_id.bmp")
    train.paths[0].rename(renamed)
    try:
        table = assign_folds(open_data(kaggle), 3, seed=0)
    finally:
        renamed.rename(train.paths[0])
    named = table[table["path"] != str(renamed)]
    assert named.groupby("patient")["fold"].nunique().max() == 1
    assert (table["patient"] == "image " + str(renamed)).sum() == 1
