"""train.py --tensorboard: per-step loss and lr, per-epoch metrics and confusion images, in the run folder."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import train as train_script
from conftest import write_lab_dataset
from common.errors import run_cli

ARGS = ["-m", "ResNet18", "--image-size", "32", "-b", "8", "-e", "2", "--workers", "0", "--seed", "4"]
STEPS = 3  # 24 training images / batch 8


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_lab_dataset(tmp_path_factory.mktemp("tb"), n_train=24, n_valid=8, n_test=2, size=32)


@pytest.fixture(scope="module")
def events(lab: Path):
    """(the run folder, its TensorBoard events) after two epochs with --tensorboard."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = lab.parent / "storage"
    assert train_script.main(["--data", str(lab), "--out", str(out), *ARGS, "--name", "tb", "--tensorboard"]) == 0
    accumulator = EventAccumulator(str(out / "tb" / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return out / "tb", accumulator


def values(accumulator, tag: str) -> tuple[list[int], np.ndarray]:
    scalars = accumulator.Scalars(tag)
    return [s.step for s in scalars], np.array([s.value for s in scalars])


def test_every_step_logs_its_loss_and_learning_rate(events) -> None:
    run, accumulator = events
    history = pd.read_csv(run / "history.csv")
    steps, losses = values(accumulator, "train/loss")
    assert steps == list(range(1, 2 * STEPS + 1))
    # every batch has 8 images, so an epoch's loss is the mean of its steps' losses
    np.testing.assert_allclose(losses.reshape(2, STEPS).mean(1), history["train_loss"], rtol=1e-5)
    lr_steps, lrs = values(accumulator, "train/lr")
    assert lr_steps == steps and lrs[0] < lrs[STEPS - 1]  # the warm-up rises over the first epoch
    np.testing.assert_allclose(lrs[[STEPS - 1, 2 * STEPS - 1]], history["lr"], rtol=1e-5)


def test_each_epoch_logs_train_and_valid_loss_and_accuracy(events) -> None:
    run, accumulator = events
    history = pd.read_csv(run / "history.csv")
    for name in ("train_loss", "train_acc", "valid_loss", "valid_acc"):
        steps, logged = values(accumulator, f"epoch/{name}")
        assert steps == [STEPS, 2 * STEPS]  # each epoch at its last step
        np.testing.assert_allclose(logged, history[name], rtol=1e-5)


def test_each_epoch_logs_the_valid_confusion_matrix_as_an_image(events) -> None:
    _, accumulator = events
    images = accumulator.Images("valid/confusion_matrix")
    assert [i.step for i in images] == [STEPS, 2 * STEPS]
    assert all(i.width > 100 and i.height > 100 and i.encoded_image_string[:4] == b"\x89PNG" for i in images)


def test_without_the_flag_nothing_is_logged(lab: Path) -> None:
    out = lab.parent / "plain"
    assert train_script.main(["--data", str(lab), "--out", str(out), *ARGS, "-e", "1", "--name", "plain"]) == 0
    assert not (out / "plain" / "tensorboard").exists()


def test_a_missing_tensorboard_package_is_one_line_before_any_work(lab: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard now raises ImportError
    status = run_cli(train_script.main, ["--data", str(lab), "--out", str(tmp_path / "out"), *ARGS, "--tensorboard"])
    assert status == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == ("error: train.py --tensorboard needs the optional package 'tensorboard', which is "
                                    "not installed; install the extras with: python3 -m pip install -r "
                                    "requirements-extras.txt  (or: pip install tensorboard)")
    assert not (tmp_path / "out").exists()


def test_a_resumed_run_continues_the_step_axis_without_repeating_steps(lab: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = lab.parent / "resumed"
    first = ["--data", str(lab), "--out", str(out), *ARGS, "-e", "1", "--name", "r", "--tensorboard"]
    assert train_script.main(first) == 0
    after_epoch_1 = (out / "r" / "last.pt").read_bytes()
    assert train_script.main(["--resume", str(out / "r"), "--out", str(out), "-e", "2", "--tensorboard"]) == 0
    # as if the second epoch had crashed before its checkpoint: it is done (and logged) again
    (out / "r" / "last.pt").write_bytes(after_epoch_1)
    assert train_script.main(["--resume", str(out / "r"), "--out", str(out), "-e", "2", "--tensorboard"]) == 0
    accumulator = EventAccumulator(str(out / "r" / "tensorboard"), size_guidance={"scalars": 0})
    accumulator.Reload()
    assert values(accumulator, "train/loss")[0] == list(range(1, 2 * STEPS + 1))
    assert values(accumulator, "epoch/valid_acc")[0] == [STEPS, 2 * STEPS]


def test_the_log_says_where_it_is_and_how_to_view_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("tensorboard")
    from core.training.tensorboard import TensorBoardLog

    TensorBoardLog(tmp_path / "storage" / "run", ("normal", "blast"), STEPS).close()
    out = capsys.readouterr().out
    assert f"TensorBoard logs -> {tmp_path / 'storage' / 'run' / 'tensorboard'}" in out
    assert f"tensorboard --logdir {tmp_path / 'storage'}" in out
