"""train.py -> eval.py -> plot.py end to end on a tiny data set, through their command lines."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

import eval as eval_script
import plot as plot_script
import train as train_script
from core.checkpoint import load_checkpoint, model_from_checkpoint
from conftest import ROOT

TINY = ["--image-size", "32", "-b", "8", "-e", "2", "--seed", "1", "--workers", "0"]


def train(data: Path, out: Path, *extra: str) -> Path:
    assert train_script.main(["--data", str(data), "--out", str(out), *TINY, *extra]) == 0
    return out


@pytest.fixture(scope="module")
def run(lab_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = train(lab_data, tmp_path_factory.mktemp("storage"), "-m", "ResNet18", "--name", "r18")
    return out / "r18"


def test_train_writes_config_history_and_checkpoints(run: Path) -> None:
    for name in ("config.json", "history.csv", "best.pt", "last.pt"):
        assert (run / name).is_file(), name
    history = pd.read_csv(run / "history.csv")
    assert list(history.columns) == ["epoch", "train_loss", "train_acc", "valid_loss", "valid_acc", "lr", "seconds",
                                     "train_objective"]
    assert history["epoch"].tolist() == [1, 2]
    config = json.loads((run / "config.json").read_text())
    assert config["arch"] == "resnet18" and config["epochs"] == 2 and "torch" in config["versions"]
    assert set(config["data_fingerprint"]) >= {"train", "valid"}


def test_a_training_step_counts_plain_cross_entropy_beside_the_smoothed_objective() -> None:
    import torch
    import torch.nn.functional as F

    from core import engine

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    x, y = torch.randn(8, 4), torch.tensor([0, 1] * 4)
    logits = model(x).detach()
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.2)
    learner = engine.Learner(model, loss_fn, torch.optim.SGD(model.parameters(), lr=0.1),
                             torch.amp.GradScaler("cpu", enabled=False), torch.nn.Identity(),
                             engine.Runtime(torch.device("cpu")))
    objective, loss, _ = engine.train_step(learner, x, y)
    # history.csv's train_loss is this plain cross-entropy, as its valid_loss is; train_objective the smoothed one
    assert loss.item() == pytest.approx(F.cross_entropy(logits, y, reduction="sum").item(), rel=1e-6)
    assert objective.item() == pytest.approx(8 * loss_fn(logits, y).item(), rel=1e-6)


def test_latest_points_at_the_newest_run(run: Path) -> None:
    assert (run.parent / "latest").resolve() == run.resolve()


def test_best_checkpoint_rebuilds_the_model_without_flags(run: Path) -> None:
    ckpt = load_checkpoint(run / "best.pt")
    model = model_from_checkpoint(ckpt, run / "best.pt").eval()
    size = ckpt["preprocess"]["image_size"]
    assert ckpt["classes"] == ["normal", "blast"] and size == 32
    assert model(torch.zeros(1, 3, size, size)).shape == (1, 2)
    history = pd.read_csv(run / "history.csv")
    assert ckpt["valid"]["valid_acc"] == pytest.approx(history["valid_acc"].max())


def test_eval_writes_kaggle_csv_with_test_ids_in_order(run: Path, lab_data: Path) -> None:
    assert eval_script.main(["-m", str(run), "--data", str(lab_data), "-c"]) == 0
    submission = pd.read_csv(run / "eval" / "resnet_18_test_r18_submission.csv")
    expected = pd.read_csv(lab_data / "resnet_18_test.csv")["Path"].tolist()
    assert list(submission.columns) == ["ID", "label"]
    assert submission["ID"].tolist() == expected
    assert set(submission["label"]) <= {0, 1}
    probs = pd.read_csv(run / "eval" / "resnet_18_test_probs.csv")
    assert probs[["prob_normal", "prob_blast"]].sum(axis=1).round(5).eq(1).all()


def test_eval_reports_metrics_and_draws_the_confusion_matrix(run: Path, lab_data: Path) -> None:
    assert eval_script.main(["-m", str(run / "best.pt"), "--data", str(lab_data), "--split", "valid"]) == 0
    metrics = json.loads((run / "eval" / "valid_metrics.json").read_text())
    history = pd.read_csv(run / "history.csv")
    assert metrics["images"] == 12
    assert metrics["accuracy"]["value"] == pytest.approx(history["valid_acc"].max())
    assert {"weighted_f1", "macro_recall", "roc_auc", "per_class"} <= set(metrics)
    assert sum(map(sum, metrics["confusion"])) == 12
    with Image.open(run / "eval" / "valid_confusion.png") as png:
        assert png.width > 200 and png.height > 200


def test_plot_writes_accuracy_figure(run: Path) -> None:
    assert plot_script.main(["-f", str(run.parent)]) == 0
    with Image.open(run.parent / "accuracy.png") as png:
        assert png.width > 400
    assert (run.parent / "confusion_matrices.png").is_file()


def test_same_seed_gives_the_same_history(lab_data: Path, tmp_path: Path) -> None:
    a = pd.read_csv(train(lab_data, tmp_path / "a", "--name", "x", "--device", "cpu") / "x" / "history.csv")
    b = pd.read_csv(train(lab_data, tmp_path / "b", "--name", "x", "--device", "cpu") / "x" / "history.csv")
    pd.testing.assert_frame_equal(a.drop(columns="seconds"), b.drop(columns="seconds"))


def test_several_models_train_one_after_another(lab_data: Path, tmp_path: Path) -> None:
    train(lab_data, tmp_path, "-m", "ResNet18", "resnet-34", "-e", "1", "--name", "lab")
    runs = sorted(p.name for p in tmp_path.iterdir() if not p.is_symlink() and (p / "best.pt").exists())
    assert runs == ["lab-ResNet18", "lab-ResNet34"]


@pytest.mark.parametrize("flags", [["--optimizer", "rmsprop"], ["-m", "ResNet19"], ["-e", "two"]])
def test_wrong_flags_give_argparse_errors(flags: list[str]) -> None:
    result = subprocess.run([sys.executable, "train.py", *flags], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    assert "usage:" in result.stderr and "Traceback" not in result.stderr


def test_mixed_precision_and_channels_last_train_and_evaluate(lab_data: Path, tmp_path: Path) -> None:
    # The CUDA defaults (AMP, channels_last) exercised on the CPU, where autocast means bfloat16.
    train(lab_data, tmp_path, "--amp", "--channels-last", "-e", "1", "--name", "amp")
    history = pd.read_csv(tmp_path / "amp" / "history.csv")
    assert history[["train_loss", "valid_loss"]].notna().all().all()
    assert eval_script.main(["-m", str(tmp_path / "amp"), "--data", str(lab_data), "-c", "--split", "valid"]) == 0
