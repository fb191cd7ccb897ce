"""Transfer learning: torchvision weights into our ResNet, the freezing schedule, offline errors."""
from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision

from core.training import pretrained
import train as train_script
from core.checkpoint import CheckpointError, load_checkpoint
from conftest import write_lab_dataset
from common.errors import UserError
from models import build_model

TINY = ["--image-size", "32", "-b", "8", "--seed", "0", "--workers", "0"]


@pytest.fixture(scope="module")
def torchvision_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "resnet18-tv.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=1000).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_lab_dataset(tmp_path_factory.mktemp("ft"), n_train=16, n_valid=8, n_test=2, size=32)


def backbone(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def test_pretrained_path_gives_the_same_backbone_weights(torchvision_weights: Path) -> None:
    model = build_model("resnet18", num_classes=2)
    message = pretrained.load_pretrained(model, str(torchvision_weights), "resnet18")
    expected = torch.load(torchvision_weights, weights_only=True)
    for name, tensor in backbone(model.state_dict()).items():
        assert torch.equal(tensor, expected[name]), name
    assert model.fc.out_features == 2 and "new Linear head" in message


def test_freezing_trains_only_the_head_then_everything(torchvision_weights: Path, data: Path, tmp_path: Path) -> None:
    args = ["--data", str(data), "--out", str(tmp_path), "--pretrained", str(torchvision_weights),
            "--freeze-epochs", "1", "--name", "ft", *TINY]
    assert train_script.main([*args, "-e", "1"]) == 0
    expected = torch.load(torchvision_weights, weights_only=True)
    after_frozen = load_checkpoint(tmp_path / "ft" / "last.pt")["model"]
    for name, tensor in backbone(after_frozen).items():  # BatchNorm statistics included
        assert torch.equal(tensor, expected[name]), name
    start_head = build_model("resnet18", 2).fc.weight.shape
    assert after_frozen["fc.weight"].shape == start_head

    assert train_script.main(["--resume", str(tmp_path / "ft"), "-e", "2"]) == 0
    after_all = load_checkpoint(tmp_path / "ft" / "last.pt")["model"]
    assert not torch.equal(after_all["layer1.0.conv1.weight"], expected["layer1.0.conv1.weight"])
    assert not torch.equal(after_all["bn1.running_mean"], expected["bn1.running_mean"])


def test_pretrained_runs_use_imagenet_statistics(torchvision_weights: Path, data: Path, tmp_path: Path) -> None:
    train_script.main(["--data", str(data), "--out", str(tmp_path), "--pretrained", str(torchvision_weights),
                       "--name", "p", "-e", "1", *TINY])
    prep = load_checkpoint(tmp_path / "p" / "best.pt")["preprocess"]
    assert tuple(prep["mean"]) == pytest.approx((0.485, 0.456, 0.406))


def test_imagenet_weights_are_read_from_the_torch_hub_folder(torchvision_weights: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    target = pretrained.imagenet_file("resnet18")
    target.parent.mkdir(parents=True)
    target.write_bytes(torchvision_weights.read_bytes())
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("must not download"))
    model = build_model("resnet18", num_classes=5)
    pretrained.load_pretrained(model, "imagenet", "resnet18")
    assert torch.equal(model.conv1.weight, torch.load(target, weights_only=True)["conv1.weight"])


def test_imagenet_offline_says_where_to_put_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(UserError, match="put it at .*resnet50-11ad3fa6.pth"):
        pretrained.load_pretrained(build_model("resnet50", 2), "imagenet", "resnet50")


def test_weights_of_another_architecture_name_both(torchvision_weights: Path) -> None:
    with pytest.raises(CheckpointError, match="ResNet18 weights but ResNet34"):
        pretrained.load_pretrained(build_model("resnet34", 2), str(torchvision_weights), "resnet34")
