"""Grad-CAM: the heat maps, the choice of examples, and the grid eval.py --cam N saves."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

import dataloader as data
from core import engine
import eval as eval_script
from core.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from core.evaluation.gradcam import grad_cam, heat_maps, select_tiles
from models import build_model

SIZE = 64  # layer4 is then 2 x 2, the smallest map with a place to point at


@pytest.fixture(scope="module")
def run(lab_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ResNet18 trained for one epoch on the lab data, saved the way train.py saves best.pt."""
    torch.manual_seed(0)
    source = data.open_data(lab_data)
    prep = data.fit_preprocess(source.splits["train"], SIZE)
    model = build_model("resnet18", len(source.classes))
    rt = engine.Runtime(torch.device("cpu"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    learner = engine.Learner(model, nn.CrossEntropyLoss(), optimizer, scaler, data.BatchTransform(prep, train=True), rt)
    model.train()
    train_set = data.ImageDataset(source.splits["train"], prep)
    for images, labels in data.make_loader(train_set, 8, data.Sampling(shuffle=True)):
        engine.train_step(learner, images, labels)
    folder = tmp_path_factory.mktemp("storage") / "r18"
    save_checkpoint({"arch": "resnet18", "num_classes": len(source.classes), "classes": list(source.classes),
                     "model": model.state_dict(), "preprocess": prep.to_dict(), "epoch": 1,
                     "config": {"data": str(lab_data), "out": str(folder.parent)}}, folder / "best.pt")
    return folder


@pytest.fixture(scope="module")
def model(run: Path) -> nn.Module:
    return model_from_checkpoint(load_checkpoint(run / "best.pt"), run / "best.pt").eval()


@pytest.fixture(scope="module")
def valid_batch(run: Path, lab_data: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The first 6 valid images, uint8 and normalised."""
    prep = data.Preprocess.from_dict(load_checkpoint(run / "best.pt")["preprocess"])
    dataset = data.ImageDataset(data.open_data(lab_data).splits["valid"], prep)
    images = torch.stack([dataset[i][0] for i in range(6)])
    return images, data.BatchTransform(prep, train=False)(images)


def test_heat_maps_have_the_input_size_and_values_in_0_1(model: nn.Module, valid_batch) -> None:
    images, x = valid_batch
    maps, logits = grad_cam(model, x, model.layer4[-1])
    assert maps.shape == (6, SIZE, SIZE) and logits.shape == (6, 2)
    assert maps.min() >= 0 and maps.max() <= 1
    assert (maps.amax(dim=(1, 2)) == 1).any()  # not all flat


def test_batched_maps_equal_one_image_at_a_time(model: nn.Module, valid_batch) -> None:
    _, x = valid_batch
    together, _ = grad_cam(model, x, model.layer4[-1])
    alone = torch.cat([grad_cam(model, x[i:i + 1], model.layer4[-1])[0] for i in range(len(x))])
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=0)


def test_grad_cam_leaves_no_hook_no_gradient_and_the_mode_as_it_was(model: nn.Module, valid_batch) -> None:
    _, x = valid_batch
    model.train()
    try:
        grad_cam(model, x, model.layer4[-1])
        assert model.training
    finally:
        model.eval()
    assert not model.layer4[-1]._forward_hooks
    assert all(p.grad is None for p in model.parameters())


def test_heat_maps_of_uint8_images_follow_the_explained_class(model: nn.Module, valid_batch, run: Path) -> None:
    images, x = valid_batch
    prep = data.Preprocess.from_dict(load_checkpoint(run / "best.pt")["preprocess"])
    transform = data.BatchTransform(prep, train=False)
    for target in (torch.zeros(6, dtype=torch.long), torch.ones(6, dtype=torch.long)):
        batched = heat_maps(model, images, transform, target, batch_size=4)
        torch.testing.assert_close(batched, grad_cam(model, x, model.layer4[-1], target)[0], atol=1e-4, rtol=0)


class RedGreen(nn.Module):
    """Class 1 = how red the image is, class 0 = how green; layer4[-1] keeps each colour's 4x4 map."""

    def __init__(self) -> None:
        super().__init__()
        self.layer4 = nn.Sequential(nn.AvgPool2d(8))  # N x 3 x 32 x 32 -> N x 3 x 4 x 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        colour = self.layer4(x).mean(dim=(2, 3))
        return torch.stack([colour[:, 1], colour[:, 0]], dim=1)


def test_the_map_of_each_class_peaks_on_its_own_evidence() -> None:
    x = torch.zeros(1, 3, 32, 32)
    x[0, 0, :8, :8] = 1.0  # red square top-left: evidence for class 1
    x[0, 1, 24:, 24:] = 1.0  # green square bottom-right: evidence for class 0
    model = RedGreen()
    red, _ = grad_cam(model, x, model.layer4[-1], torch.tensor([1]))
    green, _ = grad_cam(model, x, model.layer4[-1], torch.tensor([0]))
    assert red[0, :4, :4].min() == 1 and red[0, 16:, 16:].max() == 0
    assert green[0, -4:, -4:].min() == 1 and green[0, :16, :16].max() == 0


def test_tiles_are_the_most_confident_mistakes_and_correct_images_per_class() -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.95, 0.05], [0.45, 0.55], [0.1, 0.9]])
    labels = np.array([1, 1, 1, 0, 0, 0, 1])
    mistakes, correct = select_tiles(probs, labels, 2)
    assert mistakes.tolist() == [0, 3]  # wrong at 0.9 and 0.7; the 0.6 and 0.55 mistakes are left out
    assert correct[0].tolist() == [4]  # the only correct normal
    assert correct[1].tolist() == [6, 1]  # 0.9 before 0.8


def test_eval_cam_saves_a_grid_for_each_labelled_split(run: Path, lab_data: Path) -> None:
    assert eval_script.main(["-m", str(run), "--data", str(lab_data), "-c", "--no-cache", "--cam", "2"]) == 0
    with Image.open(run / "eval" / "valid_gradcam.png") as png:
        assert png.width > 300 and png.height > 400  # 3 rows (mistakes, normal, blast) of 2 tiles
        assert png.info["Description"] == "eval.py --cam 2"
    assert not (run / "eval" / "resnet_18_test_gradcam.png").exists()  # the test list has no labels


def test_the_grid_shows_real_mistakes_and_real_correct_images(run: Path, lab_data: Path) -> None:
    assert eval_script.main(["-m", str(run), "--data", str(lab_data), "-c", "--no-cache", "--split", "valid",
                             "--cam", "2"]) == 0
    table = pd.read_csv(run / "eval" / "valid_probs.csv")
    labels = np.array(pd.read_csv(lab_data / "valid.csv")["label"])
    probs = table[["prob_normal", "prob_blast"]].to_numpy()
    mistakes, correct = select_tiles(probs, labels, 2)
    preds = table["pred"].to_numpy()
    assert all(preds[i] != labels[i] for i in mistakes)
    for c, chosen in enumerate(correct):
        assert all(preds[i] == labels[i] == c for i in chosen)
    assert len(mistakes) + sum(map(len, correct)) > 0


def test_a_negative_cam_count_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        eval_script.get_args_parser().parse_args(["-m", "x", "--cam", "-1"])
    assert exit_info.value.code == 2
    assert "--cam" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_grad_cam_on_cuda_matches_the_cpu(model: nn.Module, valid_batch) -> None:
    _, x = valid_batch
    cpu, _ = grad_cam(model, x, model.layer4[-1])
    gpu_model = build_model("resnet18", 2)
    gpu_model.load_state_dict(model.state_dict())
    gpu_model = gpu_model.cuda().eval()
    gpu, _ = grad_cam(gpu_model, x.cuda(), gpu_model.layer4[-1])
    torch.testing.assert_close(gpu.cpu(), cpu, atol=2e-3, rtol=0)
