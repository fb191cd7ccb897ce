"""--augment: rotate (any angle, flips), upright (small tilt, no flips), none (normalise only); defaults per layout."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import train as train_script
from conftest import draw_cell, write_lab_dataset
from core.checkpoint import load_checkpoint
from data import BatchTransform, Jitter, Preprocess, default_augment
from data.augment import UPRIGHT_DEGREES

PIXELS = Preprocess(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # output = pixels in [0, 1]
NO_COLOUR = Jitter(colour=(0.0, 0.0, 0.0, 0.0))
TINY = ["-m", "ResNet18", "--image-size", "32", "-b", "8", "-e", "1", "--workers", "0", "--device", "cpu"]


def bar(n: int, side: int = 64) -> torch.Tensor:
    """n uint8 images of one horizontal white bar through the centre, plus a dot above it (the 'up')."""
    img = torch.zeros(3, side, side, dtype=torch.uint8)
    img[:, side // 2 - 1:side // 2 + 1, side // 8:side - side // 8] = 255
    img[:, side // 8:side // 8 + 4, side // 2 - 2:side // 2 + 2] = 255
    return img.expand(n, 3, side, side).clone()


def bar_angle_and_dot_side(out: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per image: the bar's angle to the horizontal in degrees (principal axis) and whether the dot is above it."""
    angles, above = [], []
    for img in out[:, 0]:
        ys, xs = torch.nonzero(img > 0.5, as_tuple=True)
        ys, xs = ys.float() - ys.float().mean(), xs.float() - xs.float().mean()
        cov = torch.stack([torch.stack([(xs * xs).mean(), (xs * ys).mean()]),
                           torch.stack([(xs * ys).mean(), (ys * ys).mean()])])
        direction = torch.linalg.eigh(cov).eigenvectors[:, -1]
        angle = math.degrees(math.atan2(direction[1].item(), direction[0].item()))
        angles.append((angle + 90) % 180 - 90)
        # the dot is the bright pixels far from the bar's line: on which side of the line (towards the top)?
        normal = torch.stack([direction[1], -direction[0]]) * (1 if direction[0] >= 0 else -1)  # points up
        offset = xs * normal[0] + ys * normal[1]
        above.append(offset[offset.abs() > 6].mean().item() > 0)
    return np.array(angles), np.array(above)


def test_upright_keeps_the_image_upright_within_its_rotation_bound() -> None:
    torch.manual_seed(0)
    out = BatchTransform(PIXELS, train=True, policy="upright", jitter=NO_COLOUR)(bar(64))
    angles, above = bar_angle_and_dot_side(out)
    assert np.abs(angles).max() <= UPRIGHT_DEGREES + 1.5  # 1.5 degrees: pixel grid and the dot's pull
    assert np.abs(angles).max() > UPRIGHT_DEGREES / 2  # it does tilt
    assert above.all(), "an image was flipped upside down"


def test_upright_never_mirrors_left_and_right() -> None:
    torch.manual_seed(1)
    img = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    img[..., 4:28, 2:10] = 255  # a block on the left
    out = BatchTransform(PIXELS, train=True, policy="upright", jitter=NO_COLOUR)(img.expand(64, 3, 32, 32).clone())
    left, right = out[:, 0, :, :16].sum(dim=(1, 2)), out[:, 0, :, 16:].sum(dim=(1, 2))
    assert (left > right).all()


def test_rotate_turns_by_any_angle_and_flips() -> None:
    torch.manual_seed(0)
    out = BatchTransform(PIXELS, train=True, policy="rotate", jitter=NO_COLOUR)(bar(64))
    angles, above = bar_angle_and_dot_side(out)
    assert np.abs(angles).max() > 45
    assert not above.all()


def test_none_is_the_identity_before_normalisation() -> None:
    prep = Preprocess(mean=(0.2, 0.3, 0.4), std=(0.5, 0.6, 0.7))
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    mean, std = torch.tensor(prep.mean).view(1, 3, 1, 1), torch.tensor(prep.std).view(1, 3, 1, 1)
    expected = (images.float() / 255 - mean) / std
    torch.manual_seed(0)
    torch.testing.assert_close(BatchTransform(prep, train=True, policy="none")(images), expected)


def test_an_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown augmentation policy 'flip'"):
        BatchTransform(PIXELS, train=True, policy="flip")


@pytest.mark.parametrize(("layout", "policy"), [("lab", "rotate"), ("kaggle", "rotate"), ("retina-lab", "rotate"),
                                                 ("retina-kaggle", "rotate"), ("csv", "upright"),
                                                 ("folders", "upright")])
def test_each_layout_has_its_default_policy(layout: str, policy: str) -> None:
    assert default_augment(layout) == policy


def write_folders(root: Path, per_class: int = 8) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("valid", 2)):
        for label, name in enumerate(("round", "big")):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                draw_cell(rng, 32, label).save(root / split / name / f"{i}.png")
    return root


def test_folder_layout_trains_upright_and_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_folders(tmp_path / "folders")
    assert train_script.main(["--data", str(data), "--out", str(tmp_path / "s"), *TINY, "--name", "f"]) == 0
    assert "augment upright" in capsys.readouterr().out
    assert json.loads((tmp_path / "s" / "f" / "config.json").read_text())["augment"] == "upright"


def test_lab_layout_trains_with_rotate(lab_data: Path, tmp_path: Path) -> None:
    assert train_script.main(["--data", str(lab_data), "--out", str(tmp_path), *TINY, "--name", "l"]) == 0
    assert json.loads((tmp_path / "l" / "config.json").read_text())["augment"] == "rotate"


def test_resume_keeps_the_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_lab_dataset(tmp_path, n_train=16, n_valid=4, n_test=2, size=32)
    out = tmp_path / "s"
    assert train_script.main(["--data", str(data), "--out", str(out), *TINY, "--augment", "none", "--name", "r"]) == 0
    assert train_script.main(["--resume", str(out / "r"), "-e", "2"]) == 0
    assert "augment none" in capsys.readouterr().out.split("epoch   1/1")[-1]
    assert load_checkpoint(out / "r" / "last.pt")["config"]["augment"] == "none"
    assert load_checkpoint(out / "r" / "last.pt")["epoch"] == 2


def test_a_run_from_before_augment_resumes_with_rotate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_folders(tmp_path / "folders")
    out = tmp_path / "s"
    assert train_script.main(["--data", str(data), "--out", str(out), *TINY, "--name", "old"]) == 0
    ckpt = load_checkpoint(out / "old" / "last.pt")
    del ckpt["config"]["augment"]
    torch.save(ckpt, out / "old" / "last.pt")
    capsys.readouterr()
    assert train_script.main(["--resume", str(out / "old"), "-e", "2"]) == 0
    assert "augment rotate" in capsys.readouterr().out
