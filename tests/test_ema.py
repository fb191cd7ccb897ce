"""--ema: an averaged copy of the weights (BatchNorm statistics included) is validated and saved in best.pt."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

import eval as eval_script
import train as train_script
from conftest import write_lab_dataset
from core.checkpoint import load_checkpoint, model_from_checkpoint
from core.training.ema import ModelEMA
from models import build_model

TINY = ["-m", "ResNet18", "--image-size", "32", "-b", "8", "-e", "2", "--workers", "0", "--device", "cpu",
        "--seed", "2"]


def test_update_moves_the_average_part_of_the_way_and_copies_integer_buffers() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = ModelEMA(model, decay=0.5)
    before = ema.module[0].weight.clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model[1].num_batches_tracked += 7
    ema.update(model, step=1000)  # past the warm-up: decay 0.5
    torch.testing.assert_close(ema.module[0].weight, before + 0.5)
    assert ema.module[1].num_batches_tracked.item() == 7


def test_batchnorm_statistics_are_averaged_too() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    ema = ModelEMA(model, decay=0.9)
    model.train()(torch.randn(8, 3, 4, 4) * 3 + 2)  # moves the running mean and variance
    ema.update(model, step=1000)
    bn, raw_bn = ema.module[1], model[1]
    torch.testing.assert_close(bn.running_mean, 0.1 * raw_bn.running_mean)
    torch.testing.assert_close(bn.running_var, 0.9 + 0.1 * raw_bn.running_var)


def test_early_steps_follow_the_model_closely() -> None:
    model = torch.nn.Linear(2, 2)
    ema = ModelEMA(model, decay=0.999)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model, step=0)  # decay min(0.999, 1/10): the average is mostly the new weights
    assert (model.weight - ema.module.weight).abs().max().item() == pytest.approx(0.1, abs=1e-6)


def test_the_average_takes_no_gradients_and_stays_in_eval_mode() -> None:
    ema = ModelEMA(build_model("resnet18", 2))
    assert not ema.module.training
    assert not any(p.requires_grad for p in ema.module.parameters())


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ema")
    data = write_lab_dataset(root, n_train=32, n_valid=8, n_test=4, size=32)
    assert train_script.main(["--data", str(data), "--out", str(root / "s"), *TINY, "--ema", "--name", "e"]) == 0
    return root / "s" / "e"


def test_ema_weights_differ_from_the_raw_weights(ema_run: Path) -> None:
    last = load_checkpoint(ema_run / "last.pt")
    assert set(last["ema"]) == set(last["model"])
    differ = [k for k in last["model"] if last["model"][k].is_floating_point()
              and not torch.equal(last["model"][k], last["ema"][k])]
    assert len(differ) > len(last["model"]) // 2


def test_best_pt_holds_the_ema_weights(tmp_path: Path, ema_run: Path) -> None:
    # one epoch: best.pt and last.pt are written at the same moment, so best.pt must hold last.pt's EMA
    data = ema_run.parents[1] / "new_dataset"
    assert train_script.main(["--data", str(data), "--out", str(tmp_path), *TINY, "-e", "1", "--ema",
                              "--name", "one"]) == 0
    best, last = load_checkpoint(tmp_path / "one" / "best.pt"), load_checkpoint(tmp_path / "one" / "last.pt")
    assert all(torch.equal(best["model"][k], last["ema"][k]) for k in last["ema"])
    assert not all(torch.equal(best["model"][k], last["model"][k]) for k in last["ema"])
    assert "ema" not in best and "optimizer" not in best  # weights and metadata only


def test_validation_scores_the_ema_weights(ema_run: Path) -> None:
    # eval.py on best.pt must find exactly the valid accuracy the history recorded for that epoch
    assert eval_script.main(["-m", str(ema_run / "best.pt"), "-c", "--split", "valid",
                             "--output", str(ema_run / "eval")]) == 0
    metrics = pd.read_json(ema_run / "eval" / "valid_metrics.json", typ="series")
    history = pd.read_csv(ema_run / "history.csv")
    assert metrics["accuracy"]["value"] == pytest.approx(history["valid_acc"].max())


def test_eval_of_last_pt_scores_the_averaged_weights_it_validated(ema_run: Path) -> None:
    # last.pt holds the raw weights too (to resume); eval, predict and export read the averaged ones
    last = load_checkpoint(ema_run / "last.pt")
    loaded = model_from_checkpoint(last, ema_run / "last.pt").state_dict()
    assert all(torch.equal(loaded[k], last["ema"][k]) for k in last["ema"])
    out = ema_run / "eval-last"
    assert eval_script.main(["-m", str(ema_run / "last.pt"), "-c", "--split", "valid", "--output", str(out)]) == 0
    metrics = pd.read_json(out / "valid_metrics.json", typ="series")
    assert metrics["accuracy"]["value"] == pytest.approx(pd.read_csv(ema_run / "history.csv")["valid_acc"].iloc[-1])


def test_resume_continues_the_average(tmp_path: Path, ema_run: Path) -> None:
    data = ema_run.parents[1] / "new_dataset"
    flat = [*TINY, "--ema", "--scheduler", "none"]  # a constant rate: 1 epoch + 1 resumed = 2 epochs
    assert train_script.main(["--data", str(data), "--out", str(tmp_path / "full"), *flat, "--name", "r"]) == 0
    cut = tmp_path / "cut" / "r"
    assert train_script.main(["--data", str(data), "--out", str(cut.parent), *flat, "-e", "1", "--name", "r"]) == 0
    assert train_script.main(["--resume", str(cut), "-e", "2"]) == 0
    resumed, full = load_checkpoint(cut / "last.pt"), load_checkpoint(tmp_path / "full" / "r" / "last.pt")
    assert resumed["config"]["ema"] is True and resumed["epoch"] == 2
    assert all(torch.equal(resumed["ema"][k], full["ema"][k]) for k in full["ema"])
