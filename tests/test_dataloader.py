"""The data pipeline on tiny generated data sets: layouts, errors, preprocessing, cache, loader, transform."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import data.cache  # noqa: E402
import data.preprocess  # noqa: E402
from dataloader import (  # noqa: E402
    UNLABELLED, BatchTransform, DataError, ImageDataset, LeukemiaLoader, Preprocess, fit_preprocess,
    Sampling, load_image, make_loader, open_data,
)

SIDE = 40  # generated images are SIDE x SIDE


def draw_cell(path: Path, centre: tuple[int, int] | None = None, radius: int = 8,
              colour: tuple[int, int, int] = (150, 80, 200), side: int = SIDE) -> Path:
    """A disc ("cell") on a black background, written to ``path`` in the format of its suffix."""
    image = Image.new("RGB", (side, side))
    cx, cy = centre or (side // 2, side // 2)
    ImageDraw.Draw(image).ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def make_lab(parent: Path, n_train: int = 6, n_valid: int = 4, n_test: int = 3) -> Path:
    """parent/new_dataset/ as the lab hands it out: CSVs with ./new_dataset/... paths."""
    root = parent / "new_dataset"
    for split, n in (("train", n_train), ("valid", n_valid)):
        rows = []
        for i in range(n):
            draw_cell(root / split / f"{i}.bmp", colour=(40 * i % 255, 90, 200))
            rows.append(f"./new_dataset/{split}/{i}.bmp,{i % 2}")
        write_csv(root / f"{split}.csv", "Path,label", rows)
    tests = []
    for i in range(n_test):
        draw_cell(root / "test" / f"{i}.bmp", radius=5 + i)
        tests.append(f"./new_dataset/test/{i}.bmp")
    for depth in (18, 50, 152):
        write_csv(root / f"resnet_{depth}_test.csv", "Path", tests)
    return root


def make_kaggle(parent: Path) -> Path:
    """parent/C-NMC_Leukemia/ with 3 folds, 7 patients (4 ALL, 3 HEM), 2 cells each, and test data."""
    base = parent / "C-NMC_Leukemia"
    patients = {"fold_0": ["1", "2", "H1"], "fold_1": ["3", "H2"], "fold_2": ["4", "H3"]}
    for fold, ids in patients.items():
        for pid in ids:
            kind = "hem" if pid.startswith("H") else "all"
            for cell in range(2):
                draw_cell(base / "training_data" / fold / kind / f"UID_{pid}_{cell}_1_{kind}.bmp")
    prelim = base / "validation_data" / "C-NMC_test_prelim_phase_data"
    for i in (1, 2, 3):
        draw_cell(prelim / f"{i}.bmp")
    write_csv(prelim.parent / "C-NMC_test_prelim_phase_data_labels.csv", "Patient_ID,new_names,labels",
              ["UID_5_1_1_all.bmp,1.bmp,1", "UID_H4_1_1_hem.bmp,2.bmp,0", "UID_5_2_1_all.bmp,3.bmp,1"])
    for i in (1, 2):
        draw_cell(base / "testing_data" / "C-NMC_test_final_phase_data" / f"{i}.bmp")
    return parent


def make_class_folders(root: Path, classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 5) -> Path:
    for c, name in enumerate(classes):
        for i in range(per_class):
            draw_cell(root / name / f"{i}.png", radius=4 + c * 6)
    return root


def patients_of(split) -> set[str]:
    return {Path(p).name.split("_")[1] for p in split.paths}


@pytest.fixture
def lab(tmp_path: Path) -> Path:
    return make_lab(tmp_path)


@pytest.fixture
def prep() -> Preprocess:
    return Preprocess(image_size=32, crop=0.8)


# --------------------------------------------------------------------------- layouts


def test_lab_layout_reads_train_valid_and_every_test_list(lab: Path) -> None:
    source = open_data(lab)
    assert source.layout == "lab" and source.task == "leukemia"
    assert set(source.splits) == {"train", "valid", "resnet_18_test", "resnet_50_test", "resnet_152_test"}
    assert (len(source.split("train")), len(source.split("valid"))) == (6, 4)
    assert source.split("train").labels == (0, 1, 0, 1, 0, 1)


def test_lab_paths_resolve_from_another_working_directory(lab: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    train = open_data(lab).split("train")
    assert train.paths[0] == lab / "train" / "0.bmp"


def test_lab_paths_resolve_from_the_folder_that_contains_the_data(lab: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(lab.parent)
    train = open_data("new_dataset").split("train")
    assert all(p.is_absolute() and p.is_file() for p in train.paths)


def test_lab_ids_keep_the_path_exactly_as_written(lab: Path) -> None:
    test = open_data(lab).split("resnet_18_test")
    assert test.ids == ("./new_dataset/test/0.bmp", "./new_dataset/test/1.bmp", "./new_dataset/test/2.bmp")


def test_lab_test_split_is_unlabelled(lab: Path, prep: Preprocess) -> None:
    test = open_data(lab).split("resnet_50_test")
    assert test.labels is None
    _, label = ImageDataset(test, prep)[0]
    assert label == UNLABELLED


def test_lab_test_labels_csv_labels_the_test_splits(lab: Path) -> None:
    write_csv(lab / "test_labels.csv", "Path,label", [f"./new_dataset/test/{i}.bmp,{i % 2}" for i in range(3)])
    assert open_data(lab).split("resnet_152_test").labels == (0, 1, 0)


def test_split_accepts_a_test_csv_name_and_the_seeds_mode_names(lab: Path) -> None:
    source = open_data(lab)
    assert source.split("resnet_18_test.csv") is source.split("resnet_18_test") is source.split("test18")


def test_unknown_split_name_lists_the_choices(lab: Path) -> None:
    with pytest.raises(DataError, match="choices: train, valid, resnet_152_test"):
        open_data(lab).split("tset")


def test_kaggle_fold_split_validates_on_fold_2(tmp_path: Path) -> None:
    source = open_data(make_kaggle(tmp_path), split="fold")
    assert source.layout == "kaggle"
    assert all("/fold_2/" in i for i in source.split("valid").ids)
    assert not any("/fold_2/" in i for i in source.split("train").ids)
    assert "no patient in both" in source.note


def test_kaggle_all_is_blast_and_hem_is_normal(tmp_path: Path) -> None:
    train = open_data(make_kaggle(tmp_path), split="fold").split("train")
    assert {(Path(i).parent.name, label) for i, label in zip(train.ids, train.labels)} == {("all", 1), ("hem", 0)}


def test_kaggle_patient_split_keeps_each_patient_on_one_side(tmp_path: Path) -> None:
    source = open_data(make_kaggle(tmp_path))  # split="patient" is the default
    train, valid = source.split("train"), source.split("valid")
    assert patients_of(train).isdisjoint(patients_of(valid))
    assert set(valid.labels) == {0, 1}  # stratified: both classes validate
    assert source.note.startswith("patient-level split") and "no patient in both" in source.note


def test_kaggle_random_split_is_image_level_and_notes_the_leak(tmp_path: Path) -> None:
    source = open_data(make_kaggle(tmp_path), split="random", valid_fraction=0.5)
    train, valid = source.split("train"), source.split("valid")
    assert len(train) + len(valid) == 14 and set(train.paths).isdisjoint(valid.paths)
    assert "leak" in source.note


def test_kaggle_splits_are_reproducible_for_a_seed(tmp_path: Path) -> None:
    root = make_kaggle(tmp_path)
    assert open_data(root, seed=3).split("valid") == open_data(root, seed=3).split("valid")


def test_kaggle_prelim_test_is_labelled_and_final_test_unlabelled(tmp_path: Path) -> None:
    source = open_data(make_kaggle(tmp_path))
    assert source.split("test").labels == (1, 0, 1)
    assert source.split("test").ids == ("1.bmp", "2.bmp", "3.bmp")
    assert source.split("final_test").labels is None


def test_kaggle_root_may_be_the_c_nmc_folder_itself(tmp_path: Path) -> None:
    source = open_data(make_kaggle(tmp_path) / "C-NMC_Leukemia")
    assert source.layout == "kaggle" and len(source.split("train")) + len(source.split("valid")) == 14


def test_csv_layout_maps_string_labels_to_sorted_classes(tmp_path: Path) -> None:
    rows = [f"img/{i}.jpg,{name}" for i, name in enumerate(["zebra", "ant", "zebra", "ant", "zebra", "ant"])]
    for i in range(6):
        draw_cell(tmp_path / "img" / f"{i}.jpg")
    write_csv(tmp_path / "labels.csv", "PATH,Label", rows)
    source = open_data(tmp_path)
    assert source.layout == "csv" and source.classes == ("ant", "zebra")
    everything = {i: l for s in ("train", "valid") for i, l in zip(source.split(s).ids, source.split(s).labels)}
    assert everything == {f"img/{i}.jpg": (0 if i % 2 else 1) for i in range(6)}


def test_folders_layout_with_train_and_valid_and_unlabelled_test(tmp_path: Path) -> None:
    make_class_folders(tmp_path / "train")
    make_class_folders(tmp_path / "valid", per_class=2)
    draw_cell(tmp_path / "test" / "x.TIF")
    source = open_data(tmp_path)
    assert source.layout == "folders" and source.classes == ("cat", "dog")
    assert (len(source.split("train")), len(source.split("valid"))) == (10, 4)
    assert source.split("test").ids == ("test/x.TIF",) and source.split("test").labels is None


def test_folders_layout_with_class_folders_only_is_a_stratified_split(tmp_path: Path) -> None:
    source = open_data(make_class_folders(tmp_path, per_class=10), valid_fraction=0.3)
    assert source.split("valid").labels == (0, 0, 0, 1, 1, 1)
    assert set(source.split("train").paths).isdisjoint(source.split("valid").paths)


# ------------------------------------------------------------------------ bad input


def test_missing_root_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        open_data(tmp_path / "nowhere")


def test_unrecognised_layout_names_every_layout_and_what_it_needs(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"lab: train\.csv and valid\.csv.*kaggle: C-NMC.*csv: .*folders: "):
        open_data(tmp_path)


def test_unrecognised_layout_points_to_a_data_set_one_level_down(lab: Path) -> None:
    with pytest.raises(DataError, match=r"a data set is in new_dataset/"):
        open_data(lab.parent)


def test_csv_without_the_label_column_names_the_csv_and_its_columns(lab: Path) -> None:
    write_csv(lab / "valid.csv", "Path,class", ["./new_dataset/valid/0.bmp,1"])
    with pytest.raises(DataError, match=r"valid\.csv has no label column .*it has: Path, class"):
        open_data(lab)


def test_label_outside_the_classes_names_the_file_and_line(lab: Path) -> None:
    write_csv(lab / "train.csv", "Path,label", ["./new_dataset/train/0.bmp,0", "./new_dataset/train/1.bmp,2"])
    with pytest.raises(DataError, match=r"train\.csv line 3: label '2' is not one of 0 \(normal\), 1 \(blast\)"):
        open_data(lab)


def test_missing_image_names_the_file_and_line(lab: Path) -> None:
    write_csv(lab / "resnet_18_test.csv", "Path", ["./new_dataset/test/0.bmp", "./new_dataset/test/99.bmp"])
    with pytest.raises(DataError, match=r"resnet_18_test\.csv line 3: image './new_dataset/test/99\.bmp' not found"):
        open_data(lab)


@pytest.mark.parametrize("damage", ["truncated", "not an image", "empty"])
def test_broken_image_is_named_when_decoded(lab: Path, prep: Preprocess, damage: str) -> None:
    broken = lab / "train" / "3.bmp"
    data = broken.read_bytes()
    broken.write_bytes({"truncated": data[: len(data) // 2], "not an image": b"hello", "empty": b""}[damage])
    dataset = ImageDataset(open_data(lab).split("train"), prep)  # listing succeeds, decoding does not
    with pytest.raises(DataError, match=r"cannot decode image .*train/3\.bmp"):
        dataset[3]


def test_broken_image_is_named_when_building_the_cache_and_no_cache_is_left(lab: Path, prep: Preprocess,
                                                                          tmp_path: Path) -> None:
    (lab / "train" / "2.bmp").write_bytes(b"BM not really")
    with pytest.raises(DataError, match=r"train/2\.bmp"):
        ImageDataset(open_data(lab).split("train"), prep, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_broken_image_read_in_a_worker_process_is_still_one_line(lab: Path, prep: Preprocess) -> None:
    (lab / "train" / "1.bmp").write_bytes(b"")
    loader = make_loader(ImageDataset(open_data(lab).split("train"), prep), 2, workers=1)
    with pytest.raises(DataError, match=r"^cannot decode image .*train/1\.bmp") as caught:
        list(loader)
    assert "\n" not in str(caught.value)


def test_empty_split_is_a_data_error(lab: Path) -> None:
    write_csv(lab / "valid.csv", "Path,label", [])
    with pytest.raises(DataError, match=r"split 'valid' is empty .*valid\.csv"):
        open_data(lab)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
def test_other_image_modes_become_three_channel_rgb(tmp_path: Path, mode: str) -> None:
    grey = np.zeros((SIDE, SIDE), dtype=np.uint8)
    grey[10:30, 10:30] = 200
    if mode == "I;16":
        image = Image.fromarray(grey.astype(np.uint16) * 257)
    elif mode == "RGBA":
        image = Image.fromarray(np.dstack([grey, grey, grey, np.full_like(grey, 255)]))
    else:
        image = Image.fromarray(grey).convert(mode)
    image.save(tmp_path / "cell.png")
    pixels = load_image(tmp_path / "cell.png", Preprocess(image_size=SIDE))
    assert pixels.shape == (SIDE, SIDE, 3) and pixels.dtype == np.uint8
    assert pixels[20, 20].tolist() == [200, 200, 200] and pixels[0, 0].tolist() == [0, 0, 0]


# ------------------------------------------------------------------- preprocessing


def test_fit_preprocess_crop_keeps_an_off_centre_cell_whole(tmp_path: Path) -> None:
    paths = [draw_cell(tmp_path / f"{i}.bmp", radius=6, side=64) for i in range(5)]
    paths.append(draw_cell(tmp_path / "edge.bmp", centre=(49, 32), radius=6, side=64))  # reaches x = 55 of 64
    split = data.Split("train", tuple(paths), (0,) * 6, tuple(map(str, paths)), "test")
    prep = fit_preprocess(split, image_size=32, imagenet_stats=True)
    assert 0.75 < prep.crop < 1.0
    pixels = load_image(tmp_path / "edge.bmp", prep)
    frame = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    assert frame.max() < 30 and pixels.max() > 100  # nothing of the cell cut at the border


def test_fit_preprocess_stats_are_the_train_pixels_mean_and_std(lab: Path) -> None:
    train = open_data(lab).split("train")
    prep = fit_preprocess(train, image_size=24)
    pixels = np.stack([load_image(p, prep) for p in train.paths]).astype(np.float64) / 255
    np.testing.assert_allclose(prep.mean, pixels.mean(axis=(0, 1, 2)), atol=1e-9)
    np.testing.assert_allclose(prep.std, pixels.std(axis=(0, 1, 2)), atol=1e-9)


def test_fit_preprocess_is_stored_in_the_cache_and_reused(lab: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    train = open_data(lab).split("train")
    first = fit_preprocess(train, image_size=24, cache_dir=tmp_path / "cache")
    monkeypatch.setattr(data.cache, "load_image", None)  # any decoding would now fail
    monkeypatch.setattr(data.preprocess, "open_rgb", None)
    assert fit_preprocess(train, image_size=24, cache_dir=tmp_path / "cache") == first


def test_imagenet_stats_keeps_the_imagenet_mean_and_std(lab: Path) -> None:
    prep = fit_preprocess(open_data(lab).split("train"), image_size=24, imagenet_stats=True)
    assert (prep.mean, prep.std) == (data.IMAGENET_MEAN, data.IMAGENET_STD)


def test_fundus_mode_crops_to_the_disk_and_pads_to_a_square(tmp_path: Path) -> None:
    photo = Image.new("RGB", (80, 50))
    ImageDraw.Draw(photo).ellipse((30, 5, 70, 45), fill=(180, 90, 40))  # a 40 px disk, off-centre
    photo.save(tmp_path / "eye.jpg", quality=95)
    pixels = load_image(tmp_path / "eye.jpg", Preprocess(image_size=40, mode="fundus"))
    assert pixels.shape == (40, 40, 3)
    assert pixels[20, 1].max() > 100 and pixels[20, 38].max() > 100  # the disk spans the width
    assert pixels[1, 1].max() < 30  # black corners


def test_preprocess_round_trips_through_a_plain_dict() -> None:
    prep = Preprocess(image_size=64, crop=0.75, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6))
    assert Preprocess.from_dict(prep.to_dict()) == prep


# --------------------------------------------------------------------------- cache


def test_cache_and_no_cache_give_identical_tensors(lab: Path, prep: Preprocess, tmp_path: Path) -> None:
    train = open_data(lab).split("train")
    cached, direct = ImageDataset(train, prep, tmp_path / "cache"), ImageDataset(train, prep)
    for i in range(len(train)):
        assert torch.equal(cached[i][0], direct[i][0]) and cached[i][1] == direct[i][1]
    assert torch.equal(cached.__getitems__([4, 1, 3])[0], direct.__getitems__([4, 1, 3])[0])


def test_parallel_cache_build_matches_decoding_in_process(lab: Path, prep: Preprocess, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data.cache, "_CHUNK", 2)  # 3 tasks for 2 worker processes
    train = open_data(lab).split("train")
    parallel = ImageDataset(train, prep, tmp_path / "cache", build_workers=2)
    assert np.array_equal(parallel.pixels, np.stack([load_image(p, prep) for p in train.paths]))


def test_getitem_returns_uint8_channels_first_and_the_label(lab: Path, prep: Preprocess, tmp_path: Path) -> None:
    image, label = ImageDataset(open_data(lab).split("train"), prep, tmp_path / "cache")[1]
    assert image.shape == (3, 32, 32) and image.dtype == torch.uint8 and label == 1


def test_getitems_returns_the_batch_in_the_order_asked(lab: Path, prep: Preprocess, tmp_path: Path) -> None:
    dataset = ImageDataset(open_data(lab).split("train"), prep, tmp_path / "cache")
    images, labels = dataset.__getitems__([5, 0, 3, 0])
    assert images.shape == (4, 3, 32, 32) and labels.dtype == torch.int64
    assert labels.tolist() == [1, 0, 1, 0]
    assert all(torch.equal(images[k], dataset[i][0]) for k, i in enumerate([5, 0, 3, 0]))


def test_cache_is_reused_without_decoding(lab: Path, prep: Preprocess, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    train = open_data(lab).split("train")
    first = ImageDataset(train, prep, tmp_path / "cache")
    mtime = first.cache_path.stat().st_mtime_ns
    monkeypatch.setattr(data.cache, "load_image", None)  # any decoding would now fail
    second = ImageDataset(train, prep, tmp_path / "cache")
    assert second.cache_path == first.cache_path and second.cache_path.stat().st_mtime_ns == mtime
    assert torch.equal(second[2][0], first[2][0])


def test_cache_is_rebuilt_when_a_file_changes(lab: Path, prep: Preprocess, tmp_path: Path) -> None:
    first = ImageDataset(open_data(lab).split("train"), prep, tmp_path / "cache")
    changed = draw_cell(lab / "train" / "2.bmp", colour=(255, 255, 255))
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    second = ImageDataset(open_data(lab).split("train"), prep, tmp_path / "cache")
    assert second.cache_path != first.cache_path
    assert second[2][0].max() == 255 and not torch.equal(second[2][0], first[2][0])


def test_cache_is_rebuilt_when_the_image_size_changes(lab: Path, prep: Preprocess, tmp_path: Path) -> None:
    train = open_data(lab).split("train")
    small = ImageDataset(train, prep, tmp_path / "cache")
    large = ImageDataset(train, Preprocess(image_size=48, crop=prep.crop), tmp_path / "cache")
    assert large.cache_path != small.cache_path and large[0][0].shape == (3, 48, 48)


def test_cache_ignores_mean_and_std(lab: Path, prep: Preprocess, tmp_path: Path) -> None:
    train = open_data(lab).split("train")
    other_stats = Preprocess(image_size=prep.image_size, crop=prep.crop, mean=(0, 0, 0), std=(1, 1, 1))
    assert ImageDataset(train, prep, tmp_path).cache_path == ImageDataset(train, other_stats, tmp_path).cache_path


def test_leukemia_loader_items_are_uint8_images_and_labels(lab: Path, tmp_path: Path) -> None:
    train = LeukemiaLoader(lab, "train", image_size=32, cache_dir=tmp_path / "cache")
    test = LeukemiaLoader(lab, "resnet_18_test.csv", image_size=32, prep=train.prep)
    image, label = train[1]
    assert len(train) == 6 and image.dtype == torch.uint8 and image.shape == (3, 32, 32) and label == 1
    assert len(test) == 3 and test[0][1] == UNLABELLED


# -------------------------------------------------------------------------- loader


def index_dataset(n: int) -> ImageDataset:
    """A stand-in dataset whose labels are the item indices (no images needed for ordering)."""

    class Indices(ImageDataset):
        def __init__(self) -> None:
            self.labels = torch.arange(n)

        def __len__(self) -> int:
            return n

        def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
            return torch.zeros(len(indices), 3, 1, 1, dtype=torch.uint8), self.labels[list(indices)]

    return Indices()


def order(loader: data.BatchLoader) -> list[int]:
    return [i for _, labels in loader for i in labels.tolist()]


def test_shuffle_order_depends_only_on_seed_and_epoch() -> None:
    loader = make_loader(index_dataset(20), 4, Sampling(shuffle=True, seed=7))
    loader.set_epoch(3)
    first = order(loader)
    loader.set_epoch(4)
    other_epoch = order(loader)
    fresh = make_loader(index_dataset(20), 4, Sampling(shuffle=True, seed=7))
    fresh.set_epoch(3)
    assert order(fresh) == first != other_epoch and sorted(first) == list(range(20))


def test_start_batch_skips_exactly_that_many_batches() -> None:
    loader = make_loader(index_dataset(22), 4, Sampling(shuffle=True, seed=1))
    loader.set_epoch(2)
    full = [labels.tolist() for _, labels in loader]
    loader.set_epoch(2, start_batch=3)
    assert [labels.tolist() for _, labels in loader] == full[3:] and len(loader) == len(full) == 6


def test_evaluation_shards_are_disjoint_and_cover_every_image_once() -> None:
    shards = [order(make_loader(index_dataset(23), 4, Sampling(shuffle=False, rank=r, world_size=3))) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(23))


def test_training_shards_pad_so_every_rank_has_the_same_batches() -> None:
    loaders = [make_loader(index_dataset(23), 4, Sampling(shuffle=True, rank=r, world_size=3)) for r in range(3)]
    shards = [order(loader) for loader in loaders]
    assert {len(loader) for loader in loaders} == {2} and {len(s) for s in shards} == {8}
    assert set(sum(shards, [])) == set(range(23))  # 24 slots: one image wraps around


def test_a_training_epoch_of_62_images_at_batch_32_sees_every_image() -> None:
    from core.distributed import Dist
    from core.training.config import TrainConfig
    from core.training.trainer import make_loaders

    train, _ = make_loaders(index_dataset(62), index_dataset(8), TrainConfig(batch_size=32), torch.device("cpu"),
                            Dist())
    for epoch in (0, 1):
        train.set_epoch(epoch)
        assert len(train) == 2 and sorted(order(train)) == list(range(62))


def test_training_drops_only_a_last_batch_of_one_image_and_alike_on_every_rank() -> None:
    # (images, ranks, batch size, batches): 97 over 3 ranks is 33 a rank, 100 is 34 (the last batch: 2 images)
    for images, world_size, size, batches in ((65, 1, 32, 2), (66, 1, 32, 3), (97, 3, 32, 1), (100, 3, 16, 3)):
        loaders = [make_loader(index_dataset(images), size,
                               Sampling(shuffle=True, drop_single=True, rank=r, world_size=world_size))
                   for r in range(world_size)]
        sizes = [[len(labels) for _, labels in loader] for loader in loaders]
        assert all(len(s) == len(loader) == batches for s, loader in zip(sizes, loaders)), (images, sizes)
        assert min(min(s) for s in sizes) >= 2


def test_loader_with_worker_processes_yields_the_same_batches(lab: Path, prep: Preprocess, tmp_path: Path) -> None:
    dataset = ImageDataset(open_data(lab).split("train"), prep, tmp_path / "cache")
    serial, parallel = (make_loader(dataset, 4, Sampling(shuffle=True, seed=5), workers=w) for w in (0, 2))
    for a, b in zip(serial, parallel, strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# ---------------------------------------------------------------- batch transform


def white_discs(n: int, side: int = 32) -> torch.Tensor:
    """n identical uint8 images: a white disc of radius side/4 in the middle of black."""
    ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    disc = ((xs - side / 2 + 0.5) ** 2 + (ys - side / 2 + 0.5) ** 2 <= (side / 4) ** 2).to(torch.uint8) * 255
    return disc.expand(n, 3, side, side).clone()


def test_sampling_grid_equals_affine_grid() -> None:
    theta = torch.randn(3, 2, 3)
    expected = torch.nn.functional.affine_grid(theta, [3, 3, 5, 7], align_corners=False)
    torch.testing.assert_close(data.sampling_grid(theta, 5, 7), expected)


def test_batch_transform_leaves_its_input_unchanged() -> None:
    images = torch.rand(2, 3, 8, 8) * 255
    before = images.clone()
    for train in (False, True):
        BatchTransform(Preprocess(), train=train)(images)
    assert torch.equal(images, before)


def test_batch_transform_eval_is_deterministic_normalisation() -> None:
    prep = Preprocess(mean=(0.2, 0.3, 0.4), std=(0.5, 0.6, 0.7))
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    mean, std = torch.tensor(prep.mean).view(1, 3, 1, 1), torch.tensor(prep.std).view(1, 3, 1, 1)
    expected = (images.float() / 255 - mean) / std
    out = BatchTransform(prep, train=False)(images)
    torch.testing.assert_close(out, expected)
    assert torch.equal(out, BatchTransform(prep, train=False)(images))


def test_batch_transform_train_keeps_shape_and_gives_float32() -> None:
    out = BatchTransform(Preprocess(), train=True)(white_discs(3))
    assert out.shape == (3, 3, 32, 32) and out.dtype == torch.float32


def test_batch_transform_train_augments_each_sample_differently() -> None:
    torch.manual_seed(0)
    out = BatchTransform(Preprocess(), train=True)(white_discs(2))
    assert not torch.allclose(out[0], out[1], atol=1e-3)


def test_batch_transform_train_is_reproduced_by_a_fixed_torch_seed() -> None:
    transform = BatchTransform(Preprocess(), train=True)
    torch.manual_seed(11)
    first = transform(white_discs(4))
    torch.manual_seed(11)
    assert torch.equal(transform(white_discs(4)), first)


def test_batch_transform_train_keeps_black_corners_black() -> None:
    torch.manual_seed(0)
    identity_stats = Preprocess(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # output = pixels in [0, 1]
    out = BatchTransform(identity_stats, train=True)(white_discs(64))
    corners = out[:, :, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert corners.max() < 0.1 and out.min() >= 0 and out.max() <= 1


def test_lab_paths_resolve_after_the_data_folder_is_renamed(tmp_path: Path) -> None:
    from conftest import write_lab_dataset

    renamed = write_lab_dataset(tmp_path, n_train=6, n_valid=3, n_test=2, size=32).rename(tmp_path / "lab3-data")
    source = open_data(renamed)
    assert source.splits["train"].paths[0] == renamed / "train" / "0.bmp"
    assert source.splits["train"].ids[0] == "./new_dataset/train/0.bmp"  # the Kaggle ID stays as written


def test_windows_style_paths_in_a_csv_resolve(tmp_path: Path) -> None:
    from conftest import write_lab_dataset

    data = write_lab_dataset(tmp_path, n_train=6, n_valid=3, n_test=2, size=32)
    csv = data / "train.csv"
    csv.write_text(csv.read_text().replace("./new_dataset/train/", ".\\\\new_dataset\\\\train\\\\"))
    assert open_data(data).splits["train"].paths[1] == data / "train" / "1.bmp"
