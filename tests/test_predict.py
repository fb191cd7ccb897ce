"""predict.py: new images in, a CSV of classes and probabilities out; the same numbers as eval.py."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import eval as eval_script
import predict as predict_script
import train as train_script
from conftest import write_lab_dataset
from common.errors import run_cli
from core.evaluation import fitted, threshold

TINY = ["-m", "ResNet18", "--image-size", "32", "-b", "8", "-e", "1", "--workers", "0"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_lab_dataset(tmp_path_factory.mktemp("predict"), n_train=24, n_valid=12, n_test=4, size=40)


def train(lab: Path, name: str, seed: int) -> Path:
    out = lab.parent / "storage"
    assert train_script.main(["--data", str(lab), "--out", str(out), *TINY, "--seed", str(seed), "--name", name]) == 0
    return out / name


@pytest.fixture(scope="module")
def run(lab: Path) -> Path:
    return train(lab, "r18", seed=1)


def probs_of(table: pd.DataFrame) -> np.ndarray:
    return table[[c for c in table.columns if c.startswith("prob_")]].to_numpy(dtype=float)


def fitted_on(checkpoint: Path, tta: str | None = None, temperature: float | None = None) -> dict:
    """What eval.py records for a setting fitted on valid with ``checkpoint``."""
    return fitted.provenance(fitted.checkpoint_records([(checkpoint, 1)]), tta, temperature, "valid", None)


def predict(*argv: str) -> tuple[int, pd.DataFrame]:
    out = Path(argv[argv.index("-o") + 1])
    status = run_cli(predict_script.main, list(argv))
    return status, pd.read_csv(out, keep_default_na=False)


@pytest.mark.parametrize("tta", [False, True])
def test_predictions_equal_eval_py_on_the_same_images(run: Path, lab: Path, tmp_path: Path, tta: bool) -> None:
    flag = ["--tta"] if tta else []
    assert eval_script.main(["-m", str(run), "--split", "valid", "-c", "--output", str(tmp_path / "eval"), *flag]) == 0
    evaluated = pd.read_csv(next((tmp_path / "eval").glob("valid*probs*.csv")))
    status, predicted = predict("-m", str(run), str(lab / "valid.csv"), "-o", str(tmp_path / "p.csv"), "--device",
                                "cpu", "-b", "5", *flag)
    assert status == 0 and len(predicted) == len(evaluated) == 12
    assert [Path(p).name for p in predicted["path"]] == [Path(p).name for p in evaluated["ID"]]
    np.testing.assert_allclose(probs_of(predicted), probs_of(evaluated), atol=1e-6)
    names = np.array(["normal", "blast"])
    assert list(predicted["prediction"]) == list(names[probs_of(evaluated).argmax(1)])


def test_folders_are_searched_recursively_and_globs_and_csvs_expand(run: Path, lab: Path, tmp_path: Path) -> None:
    nested = tmp_path / "new" / "deeper"
    nested.mkdir(parents=True)
    for i in range(3):
        shutil.copy(lab / "test" / f"{i}.bmp", nested / f"cell{i}.bmp")
    (tmp_path / "new" / "notes.txt").write_text("not an image")
    (tmp_path / "list.csv").write_text("id,PATH\n" + "".join(f"a{i},{lab}/valid/{i}.bmp\n" for i in range(2)))
    status, table = predict("-m", str(run), str(tmp_path / "new"), str(lab / "train" / "1*.bmp"),
                            str(tmp_path / "list.csv"), "-o", str(tmp_path / "p.csv"), "--device", "cpu")
    assert status == 0
    names = [Path(p).name for p in table["path"]]
    assert names[:3] == ["cell0.bmp", "cell1.bmp", "cell2.bmp"]
    assert names[3:-2] == sorted(p.name for p in (lab / "train").glob("1*.bmp"))
    assert names[-2:] == ["0.bmp", "1.bmp"]
    assert set(table["prediction"]) <= {"normal", "blast"}
    np.testing.assert_allclose(probs_of(table).sum(1), 1.0, atol=1e-5)


def test_an_unreadable_image_gets_an_error_row_and_the_others_are_predicted(run: Path, lab: Path, tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i in range(3):
        shutil.copy(lab / "test" / f"{i}.bmp", folder / f"{i}.bmp")
    (folder / "1.bmp").write_bytes((folder / "1.bmp").read_bytes()[:60])  # truncated
    (folder / "9.png").write_bytes(b"not a png at all")
    status, table = predict("-m", str(run), str(folder), str(tmp_path / "missing.bmp"), "-o", str(tmp_path / "p.csv"),
                            "--device", "cpu", "-b", "2")
    assert status == 1
    assert len(table) == 5
    failed = table[table["error"] != ""]
    assert [Path(p).name for p in failed["path"]] == ["1.bmp", "9.png", "missing.bmp"]
    assert (failed["prediction"] == "").all() and (failed[["prob_normal", "prob_blast"]] == "").all().all()
    ok = table[table["error"] == ""]
    assert [Path(p).name for p in ok["path"]] == ["0.bmp", "2.bmp"] and set(ok["prediction"]) <= {"normal", "blast"}
    out = capsys.readouterr().out
    assert "2 of 5 images predicted, 3 failed" in out and "missing.bmp not found" in out


def test_the_saved_operating_point_decides_unless_threshold_is_given(run: Path, lab: Path, tmp_path: Path) -> None:
    (run / "eval").mkdir(exist_ok=True)
    point = run / "eval" / "operating_point.json"
    try:
        threshold.save(run / "eval", "0.0", 0.0, "normal", fitted_on(run / "best.pt"))
        _, table = predict("-m", str(run), str(lab / "valid"), "-o", str(tmp_path / "a.csv"), "--device", "cpu")
        assert (table["prediction"] == "normal").all()  # p >= 0 always holds
        _, table = predict("-m", str(run), str(lab / "valid"), "-o", str(tmp_path / "b.csv"), "--device", "cpu",
                           "--threshold", "1.0")
        assert (table["prediction"] == "blast").all()  # the saved positive class, never reached
    finally:
        point.unlink()
    _, table = predict("-m", str(run), str(lab / "valid"), "-o", str(tmp_path / "c.csv"), "--device", "cpu")
    probs = probs_of(table)
    assert list(table["prediction"]) == list(np.array(["normal", "blast"])[probs.argmax(1)])


def test_several_runs_average_their_probabilities(run: Path, lab: Path, tmp_path: Path) -> None:
    other = train(lab, "r18-seed2", seed=2)
    images = str(lab / "valid")
    tables = [predict(*models, images, "-o", str(tmp_path / f"{i}.csv"), "--device", "cpu")[1]
              for i, models in enumerate([["-m", str(run)], ["-m", str(other)], ["-m", str(run), "-m", str(other)]])]
    assert not np.allclose(probs_of(tables[0]), probs_of(tables[1]))
    np.testing.assert_allclose(probs_of(tables[2]), (probs_of(tables[0]) + probs_of(tables[1])) / 2, atol=1e-6)


def test_cam_writes_one_overlay_per_predicted_image(run: Path, lab: Path, tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    for i in range(3):
        shutil.copy(lab / "test" / f"{i}.bmp", tmp_path / "imgs" / f"{i}.bmp")
    (tmp_path / "imgs" / "bad.bmp").write_bytes(b"BM broken")
    status, table = predict("-m", str(run), str(tmp_path / "imgs"), "-o", str(tmp_path / "out" / "p.csv"),
                            "--device", "cpu", "--cam")
    assert status == 1
    written = sorted((tmp_path / "out" / "gradcam").iterdir())
    assert [p.name for p in written] == ["00001_0.png", "00002_1.png", "00003_2.png"]
    assert list(table["cam"]) == [str(p) for p in written] + [""]
    overlay = np.asarray(Image.open(written[0]))
    assert overlay.shape == (32, 32, 3) and overlay.std() > 0


def test_a_threshold_outside_0_to_1_is_one_line(run: Path, lab: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    assert run_cli(predict_script.main, ["-m", str(run), str(lab / "valid"), "--threshold", "1.5"]) == 2
    assert capsys.readouterr().err.strip() == "error: --threshold must be between 0 and 1 (got 1.5)"


def test_a_temperature_saved_by_eval_calibrate_is_applied_as_eval_applies_it(run: Path, lab: Path,
                                                                              tmp_path: Path) -> None:
    copy = tmp_path / "run"
    copy.mkdir()
    shutil.copy(run / "best.pt", copy / "best.pt")
    assert eval_script.main(["-m", str(copy), "--split", "valid", "-c", "--calibrate", "--bootstrap", "0"]) == 0
    assert (copy / "eval" / "temperature.json").is_file()
    evaluated = pd.read_csv(next((copy / "eval").glob("valid*probs*.csv")))
    status, predicted = predict("-m", str(copy), str(lab / "valid.csv"), "-o", str(tmp_path / "p.csv"), "--device",
                                "cpu")
    assert status == 0
    np.testing.assert_allclose(probs_of(predicted), probs_of(evaluated), atol=1e-6)


def test_a_predict_that_fails_writes_nothing_over_earlier_predictions(run: Path, lab: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    csv, cams = tmp_path / "p.csv", tmp_path / "cams"
    status, before = predict("-m", str(run), str(lab / "test"), "-o", str(csv), "--device", "cpu", "--cam", str(cams))
    overlays = {p: p.read_bytes() for p in cams.iterdir()}
    earlier = csv.read_bytes()
    assert status == 0 and len(overlays) == len(before) > 0
    status = run_cli(predict_script.main, ["-m", str(run), str(tmp_path / "no-such-folder"), "-o", str(csv),
                                           "--device", "cpu", "--cam", str(cams)])
    assert status == 1 and "nothing written" in capsys.readouterr().err
    assert csv.read_bytes() == earlier and {p: p.read_bytes() for p in cams.iterdir()} == overlays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cams", "p.csv"]  # no temporary leftovers
