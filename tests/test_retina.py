"""Diabetic retinopathy data: both retina layouts, the fundus crop, RetinopathyLoader and imbalance helpers.

Every image is a tiny JPEG written by the test: an orange disk (the fundus) on black.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from sklearn.utils.class_weight import compute_class_weight

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data import Jitter  # noqa: E402
from dataloader import (  # noqa: E402
    RETINOPATHY_CLASSES, UNLABELLED, BatchTransform, DataError, ImageDataset, Preprocess, RetinopathyLoader,
    Sampling, class_weights, fundus_box, load_image, make_loader, open_data,
)

ORANGE = (230, 120, 40)
# Ten patients, both eyes each; the right eye is at most as sick as the left.
PATIENTS = list(range(1, 11))
LEFT_GRADES = [0, 0, 0, 0, 1, 1, 2, 2, 3, 4]
RIGHT_GRADES = [0, 0, 0, 0, 0, 1, 2, 1, 3, 4]
TEST_NAMES = ["21_left", "21_right", "22_left", "22_right", "23_left", "23_right"]
TEST_GRADES = [4, 3, 0, 0, 2, 1]


def fundus(path: Path, size: tuple[int, int] = (48, 48), centre: tuple[int, int] | None = None,
           radius: int = 18) -> Path:
    """An orange disk on black, saved in the format of the path's suffix (JPEG quality 90)."""
    width, height = size
    cx, cy = centre or (width // 2, height // 2)
    photo = Image.new("RGB", size)
    ImageDraw.Draw(photo).ellipse((cx - radius, cy - radius, cx + radius - 1, cy + radius - 1), fill=ORANGE)
    path.parent.mkdir(parents=True, exist_ok=True)
    photo.save(path, quality=90)
    return path


def train_rows() -> tuple[list[str], list[int]]:
    names = [f"{p}_{eye}" for p in PATIENTS for eye in ("left", "right")]
    grades = [g for pair in zip(LEFT_GRADES, RIGHT_GRADES) for g in pair]
    return names, grades


def write_column(path: Path, values: list) -> Path:
    path.write_text("".join(f"{v}\n" for v in values))
    return path


def make_retina_lab(root: Path, folder: str = "images", extension: str = ".jpeg", test_labels: bool = True) -> Path:
    """The retinopathy lab: four one-column CSVs without header, images in ``root/folder``."""
    names, grades = train_rows()
    for name in names + TEST_NAMES:
        fundus(root / folder / f"{name}{extension}")
    write_column(root / "train_img.csv", names)
    write_column(root / "train_label.csv", grades)
    write_column(root / "test_img.csv", TEST_NAMES)
    if test_labels:
        write_column(root / "test_label.csv", TEST_GRADES)
    return root


def make_retina_kaggle(root: Path, test: str = "labelled") -> Path:
    """Kaggle's layout: trainLabels.csv (image,level) + train/; test/ with retinopathy_solution.csv or not."""
    names, grades = train_rows()
    for name in names:
        fundus(root / "train" / f"{name}.jpeg")
    (root / "trainLabels.csv").write_text("image,level\n" + "".join(f"{n},{g}\n" for n, g in zip(names, grades)))
    if test != "none":
        for name in TEST_NAMES:
            fundus(root / "test" / f"{name}.jpeg")
    if test == "labelled":
        usage = ["Public", "Private"] * 3
        rows = [f"{n},{g},{u}\n" for n, g, u in zip(TEST_NAMES, TEST_GRADES, usage)]
        (root / "retinopathy_solution.csv").write_text("image,level,Usage\n" + "".join(rows))
    return root


def patient(name: str) -> str:
    return name.split("_")[0]


# ---------------------------------------------------------------------- retina-lab


def test_retina_lab_is_detected_with_the_five_grades(tmp_path: Path) -> None:
    source = open_data(make_retina_lab(tmp_path))
    assert (source.layout, source.task, source.classes) == ("retina-lab", "retinopathy", RETINOPATHY_CLASSES)
    assert set(source.splits) == {"train", "valid", "test"}


def test_retina_lab_valid_is_a_slice_of_train_and_test_is_labelled(tmp_path: Path) -> None:
    source = open_data(make_retina_lab(tmp_path), valid_fraction=0.2)
    train, valid, test = (source.split(name) for name in ("train", "valid", "test"))
    names, grades = train_rows()
    assert sorted(train.ids + valid.ids) == sorted(names) and not set(train.ids) & set(valid.ids)
    assert len(valid) == 6  # both eyes of 3 patients: one of each grade (by the worse eye) held by two or more
    assert dict(zip(train.ids + valid.ids, train.labels + valid.labels)) == dict(zip(names, grades))
    assert (test.ids, test.labels) == (tuple(TEST_NAMES), tuple(TEST_GRADES))


def test_retina_lab_ids_are_the_names_as_written_and_paths_the_files(tmp_path: Path) -> None:
    test = open_data(make_retina_lab(tmp_path)).split("test")
    assert test.ids[0] == "21_left" and test.paths[0] == tmp_path / "images" / "21_left.jpeg"


@pytest.mark.parametrize(("folder", "extension"),
                         [("images", ".jpeg"), ("", ".jpeg"), ("", ".jpg"), ("images", ".png")])
def test_retina_lab_images_may_lie_in_images_or_the_root(tmp_path: Path, folder: str, extension: str) -> None:
    test = open_data(make_retina_lab(tmp_path, folder, extension)).split("test")
    assert test.paths[0] == tmp_path / folder / f"21_left{extension}"


def test_retina_lab_keeps_both_eyes_of_a_patient_on_one_side(tmp_path: Path) -> None:
    source = open_data(make_retina_lab(tmp_path))
    train, valid = source.split("train"), source.split("valid")
    assert not {patient(n) for n in train.ids} & {patient(n) for n in valid.ids}
    assert "both eyes of a patient on the same side" in source.note


def test_retina_lab_with_some_names_lacking_a_patient_id_keeps_the_named_eyes_together_and_warns(
        tmp_path: Path) -> None:
    root = make_retina_lab(tmp_path)
    names = (root / "train_img.csv").read_text().split()
    fundus(root / "images" / "odd.jpeg")
    write_column(root / "train_img.csv", [*names, "odd"])
    write_column(root / "train_label.csv", [*(root / "train_label.csv").read_text().split(), 0])
    source = open_data(root)
    train, valid = source.split("train"), source.split("valid")
    named = lambda split: {patient(n) for n in split.ids if n != "odd"}  # noqa: E731
    assert not named(train) & named(valid)
    assert f"only {len(names)} of {len(names) + 1} names carry a patient id" in source.note


def test_retina_lab_split_is_seeded(tmp_path: Path) -> None:
    root = make_retina_lab(tmp_path)
    valid_ids = {seed: open_data(root, seed=seed).split("valid").ids for seed in (0, 0, 1, 2, 3)}
    assert open_data(root, seed=0).split("valid").ids == valid_ids[0]
    assert len(set(valid_ids.values())) > 1


def test_retina_lab_without_patient_names_splits_stratified_by_image(tmp_path: Path) -> None:
    names = [f"img{i:02d}" for i in range(10)]
    for name in names:
        fundus(tmp_path / "images" / f"{name}.jpeg")
    write_column(tmp_path / "train_img.csv", names)
    write_column(tmp_path / "train_label.csv", [0] * 5 + [2] * 5)
    source = open_data(tmp_path, valid_fraction=0.2)
    assert sorted(source.split("valid").labels) == [0, 2] and "no patient id" in source.note


def test_retina_lab_test_without_labels_is_unlabelled(tmp_path: Path) -> None:
    test = open_data(make_retina_lab(tmp_path, test_labels=False)).split("test")
    assert test.labels is None and test.ids == tuple(TEST_NAMES)


def test_retina_lab_rows_of_different_lengths_name_both_files_and_counts(tmp_path: Path) -> None:
    root = make_retina_lab(tmp_path)
    write_column(root / "train_label.csv", train_rows()[1][:-1])
    with pytest.raises(DataError, match=r"train_img\.csv has 20 rows but .*train_label\.csv has 19") as error:
        open_data(root)
    assert "\n" not in str(error.value)


def test_retina_lab_bad_label_names_the_file_and_line(tmp_path: Path) -> None:
    root = make_retina_lab(tmp_path)
    grades = train_rows()[1]
    grades[2] = 7  # the third row: line 3, since these CSVs have no header
    write_column(root / "train_label.csv", grades)
    with pytest.raises(DataError, match=r"train_label\.csv line 3: label '7' is not one of 0 \(no DR\)"):
        open_data(root)


def test_retina_lab_missing_image_names_the_file_and_line(tmp_path: Path) -> None:
    root = make_retina_lab(tmp_path)
    (root / "images" / "22_left.jpeg").unlink()
    with pytest.raises(DataError, match=r"test_img\.csv line 3: image '22_left' not found"):
        open_data(root)


# ------------------------------------------------------------------- retina-kaggle


def test_retina_kaggle_is_detected_and_keeps_both_eyes_of_a_patient_together(tmp_path: Path) -> None:
    source = open_data(make_retina_kaggle(tmp_path), valid_fraction=0.3)
    train, valid = source.split("train"), source.split("valid")
    assert (source.layout, source.task) == ("retina-kaggle", "retinopathy")
    assert len(train) + len(valid) == 20 and len(valid) == 6
    assert not {patient(n) for n in train.ids} & {patient(n) for n in valid.ids}
    assert "patient-level split" in source.note and "both eyes" in source.note
    assert train.paths[0].parent == tmp_path / "train"


def test_retina_kaggle_solution_csv_labels_the_test_folder(tmp_path: Path) -> None:
    source = open_data(make_retina_kaggle(tmp_path, test="labelled"))
    test = source.split("test")
    assert (test.ids, test.labels) == (tuple(TEST_NAMES), tuple(TEST_GRADES))
    assert "retinopathy_solution.csv" in source.note


def test_retina_kaggle_test_folder_without_labels_is_unlabelled(tmp_path: Path) -> None:
    test = open_data(make_retina_kaggle(tmp_path, test="unlabelled")).split("test")
    assert test.labels is None and sorted(test.ids) == sorted(TEST_NAMES)


def test_retina_kaggle_random_split_is_image_level_and_notes_the_leak(tmp_path: Path) -> None:
    source = open_data(make_retina_kaggle(tmp_path, test="none"), split="random")
    assert "image-level" in source.note and "patients have an eye on each side" in source.note
    assert set(source.splits) == {"train", "valid"}


def test_retina_kaggle_name_without_a_patient_id_names_the_line(tmp_path: Path) -> None:
    root = make_retina_kaggle(tmp_path, test="none")
    fundus(root / "train" / "scan.jpeg")
    with open(root / "trainLabels.csv", "a") as csv:
        csv.write("scan,0\n")
    with pytest.raises(DataError, match=r"trainLabels\.csv line 22: no patient id in image name 'scan'"):
        open_data(root)


def test_retina_layouts_can_be_named(tmp_path: Path) -> None:
    lab, kaggle = make_retina_lab(tmp_path / "lab"), make_retina_kaggle(tmp_path / "kaggle")
    assert open_data(lab, layout="retina-lab").layout == "retina-lab"
    assert open_data(kaggle, layout="retina-kaggle").layout == "retina-kaggle"
    with pytest.raises(DataError, match=r"retina-lab layout needs .*train_img\.csv"):
        open_data(kaggle, layout="retina-lab")


# ------------------------------------------------------------------- fundus crop


def centre_and_side(path: Path) -> tuple[float, float, int]:
    """Centre (x, y) and side of the square that ``fundus_box`` finds in the photo at ``path``."""
    with Image.open(path) as photo:
        left, top, right, bottom = fundus_box(photo.convert("RGB"))
    assert right - left == bottom - top
    return (left + right) / 2, (top + bottom) / 2, right - left


def fundus_pixels(path: Path, size: int) -> np.ndarray:
    return load_image(path, Preprocess(image_size=size, mode="fundus"))


def assert_disk(path: Path, centre: tuple[int, int], diameter: int) -> None:
    """The square is centred on the disk (within 1 px) and its side is the diameter plus JPEG's bleed.

    JPEG smears the colour of a sharp edge over up to 2 px of the black around it.
    """
    x, y, side = centre_and_side(path)
    assert (x, y) == pytest.approx(centre, abs=1) and diameter <= side <= diameter + 4


def test_fundus_crop_centres_an_off_centre_disk(tmp_path: Path) -> None:
    photo = fundus(tmp_path / "eye.jpeg", size=(64, 48), centre=(44, 22), radius=16)  # x 28..59, y 6..37
    assert_disk(photo, (44, 22), 32)
    pixels = fundus_pixels(photo, 32)
    assert pixels[16, 16].tolist() == pytest.approx(ORANGE, abs=12) and pixels[0, 0].max() < 20


def test_fundus_crop_of_a_disk_cut_at_the_top_keeps_the_disk_centred(tmp_path: Path) -> None:
    photo = fundus(tmp_path / "eye.jpeg", size=(64, 48), centre=(32, 12), radius=20)  # y -8..31: 8 rows cut
    assert_disk(photo, (32, 12), 40)
    pixels = fundus_pixels(photo, 42)
    assert pixels[:7].max() < 20 and pixels[10, 21].max() > 150  # black where the photo was cut, then the disk


def test_fundus_crop_of_a_disk_cut_at_top_and_bottom_stays_centred(tmp_path: Path) -> None:
    photo = fundus(tmp_path / "eye.jpeg", size=(80, 40), centre=(40, 20), radius=26)  # y -6..45: 6 cut at each end
    assert_disk(photo, (40, 20), 52)


def test_fundus_crop_ignores_jpeg_noise_and_specks_in_the_black_border(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    photo = Image.new("RGB", (64, 64))
    ImageDraw.Draw(photo).ellipse((16, 16, 47, 47), fill=ORANGE)
    noisy = np.asarray(photo).astype(int) + rng.integers(0, 10, (64, 64, 1))
    for y, x in ((2, 2), (58, 5), (4, 56), (30, 3)):
        noisy[y:y + 2, x:x + 2] = 120  # dust or hot pixels far from the disk
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(tmp_path / "eye.jpeg", quality=75)
    assert_disk(tmp_path / "eye.jpeg", (32, 32), 32)


def test_fundus_crop_of_an_all_black_photo_is_the_whole_photo(tmp_path: Path) -> None:
    Image.new("RGB", (40, 30)).save(tmp_path / "black.jpeg")
    pixels = fundus_pixels(tmp_path / "black.jpeg", 32)
    assert pixels.shape == (32, 32, 3) and pixels.max() < 5


# --------------------------------------------------------------- RetinopathyLoader


def test_retinopathy_loader_items_are_uint8_fundus_crops_and_grades(tmp_path: Path) -> None:
    root = make_retina_lab(tmp_path / "data")
    train = RetinopathyLoader(root, "train", image_size=32, cache_dir=tmp_path / "cache")
    image, grade = train[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.uint8 and grade in range(5)
    assert isinstance(train, ImageDataset) and train.prep.mode == "fundus" and len(train) == 14
    test = RetinopathyLoader(root, "test", image_size=32, prep=train.prep)
    assert [test[i][1] for i in range(len(test))] == TEST_GRADES


def test_retinopathy_loader_of_an_unlabelled_test_gives_unlabelled(tmp_path: Path) -> None:
    test = RetinopathyLoader(make_retina_lab(tmp_path, test_labels=False), "test", image_size=32)
    assert test[0][1] == UNLABELLED


# ---------------------------------------------------------------- class imbalance


def test_class_weights_inverse_is_n_over_c_times_n_c() -> None:
    labels = [0] * 6 + [1] * 3 + [2]
    weights = class_weights(labels, "inverse")
    torch.testing.assert_close(weights, torch.tensor([10 / 18, 10 / 9, 10 / 3]))
    torch.testing.assert_close(weights, torch.tensor(compute_class_weight("balanced", classes=np.arange(3), y=labels),
                                                     dtype=torch.float32))


def test_class_weights_sqrt_is_one_over_root_n_c_with_mean_one_over_samples() -> None:
    labels = [0, 0, 0, 0, 1]  # sqrt counts 2 and 1: w = 5 / (sqrt(n_c) * 3)
    weights = class_weights(labels, "sqrt")
    torch.testing.assert_close(weights, torch.tensor([5 / 6, 5 / 3]))
    assert weights[torch.tensor(labels)].mean().item() == pytest.approx(1.0)


def test_class_weights_give_an_absent_class_zero_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        inverse = class_weights([0, 0, 0, 0, 1], "inverse", num_classes=3)
        root = class_weights(torch.tensor([0, 0, 0, 0, 1]), "sqrt", num_classes=3)
    torch.testing.assert_close(inverse, torch.tensor([0.625, 2.5, 0.0]))
    torch.testing.assert_close(root, torch.tensor([5 / 6, 5 / 3, 0.0]))


def test_class_weights_none_is_all_ones() -> None:
    torch.testing.assert_close(class_weights([0, 0, 4], "none"), torch.ones(5))


def test_class_weights_unknown_kind_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="none, inverse, sqrt"):
        class_weights([0, 1], "balanced")


# --------------------------------------------------------------- balanced sampling


def labelled_indices(labels: list[int]) -> ImageDataset:
    """A stand-in dataset whose 'images' are the item indices, with the given labels."""

    class Items(ImageDataset):
        def __init__(self) -> None:
            self.labels = torch.tensor(labels)

        def __len__(self) -> int:
            return len(labels)

        def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
            return torch.tensor(indices), self.labels[list(indices)]

    return Items()


NINETY_TEN = [0] * 90 + [1] * 10


def epoch_indices(loader, epoch: int, start_batch: int = 0) -> list[int]:
    loader.set_epoch(epoch, start_batch)
    return [i for indices, _ in loader for i in indices.tolist()]


def test_balanced_sampling_sees_both_classes_about_equally_often() -> None:
    loader = make_loader(labelled_indices(NINETY_TEN), 10, Sampling(shuffle=True, seed=3, balanced=True))
    drawn = [i for epoch in range(5) for i in epoch_indices(loader, epoch)]
    rare = sum(i >= 90 for i in drawn) / len(drawn)
    assert len(drawn) == 500 and 0.4 < rare < 0.6  # 0.1 without balancing


def test_balanced_sampling_depends_only_on_seed_and_epoch() -> None:
    balanced = Sampling(shuffle=True, seed=3, balanced=True)
    first = epoch_indices(make_loader(labelled_indices(NINETY_TEN), 10, balanced), 2)
    loader = make_loader(labelled_indices(NINETY_TEN), 10, Sampling(shuffle=True, seed=3, balanced=True))
    assert epoch_indices(loader, 2) == first != epoch_indices(loader, 1)
    assert epoch_indices(loader, 2, start_batch=4) == first[40:]


def test_balanced_sampling_keeps_the_number_of_batches_per_epoch() -> None:
    for drop_last in (False, True):
        for world_size in (1, 3):
            orders = (Sampling(shuffle=True, drop_last=drop_last, balanced=b, rank=world_size - 1,
                               world_size=world_size) for b in (False, True))
            plain, balanced = (make_loader(labelled_indices(NINETY_TEN), 16, order) for order in orders)
            assert len(balanced) == len(plain) == len(list(balanced))


def test_balanced_rank_shards_deal_out_one_draw() -> None:
    whole = epoch_indices(make_loader(labelled_indices(NINETY_TEN), 5, Sampling(shuffle=True, balanced=True)), 0)
    shards = [epoch_indices(make_loader(labelled_indices(NINETY_TEN), 5,
                                        Sampling(shuffle=True, balanced=True, rank=r, world_size=2)), 0)
              for r in range(2)]
    assert shards[0] == whole[0::2] and shards[1] == whole[1::2]


def test_balanced_sampling_needs_labels_and_shuffle() -> None:
    with pytest.raises(ValueError, match="unlabelled"):
        make_loader(labelled_indices([UNLABELLED] * 4), 2, Sampling(shuffle=True, balanced=True))
    with pytest.raises(ValueError, match="shuffle=True"):
        make_loader(labelled_indices([0, 1]), 2, Sampling(shuffle=False, balanced=True))


# -------------------------------------------------------------- fundus augmentation


def test_batch_transform_uses_mild_colour_jitter_for_fundus_photos() -> None:
    fundus_tf, cells_tf = BatchTransform(Preprocess(mode="fundus"), True), BatchTransform(Preprocess(), True)
    assert (fundus_tf.brightness, fundus_tf.contrast, fundus_tf.saturation, fundus_tf.hue) == (0.1, 0.1, 0.1, 0.02)
    assert (cells_tf.brightness, cells_tf.contrast, cells_tf.saturation, cells_tf.hue) == (0.2, 0.2, 0.2, 0.04)
    strong = Jitter(colour=(0.3, 0.1, 0.1, 0.02))
    assert BatchTransform(Preprocess(mode="fundus"), True, jitter=strong).brightness == 0.3
