"""eval.py end to end: intervals, per-patient results, the operating point, calibration and ensembles."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import eval as eval_script
import train as train_script
from conftest import write_lab_dataset
from core import threshold

TINY = ["-b", "8", "--seed", "1", "--workers", "0"]
PROBS = ["prob_normal", "prob_blast"]


def patient_named_valid(data: Path) -> None:
    """Rename the valid images as C-NMC does (UID_<patient>_<image>_<cell>_all/hem.bmp), two cells a patient."""
    frame = pd.read_csv(data / "valid.csv")
    rows = []
    for i, (path, label) in enumerate(zip(frame["Path"], frame["label"])):
        patient = f"{i // 6 + 1}" if label else f"H{i // 6 + 1}"  # valid labels run 0,1,1,0,1,1,...
        name = f"UID_{patient}_{i}_1_{'all' if label else 'hem'}.bmp"
        (data / "valid" / Path(path).name).rename(data / "valid" / name)
        rows.append((f"./new_dataset/valid/{name}", label))
    (data / "valid.csv").write_text("Path,label\n" + "".join(f"{p},{l}\n" for p, l in rows))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(data, run a, run b): ResNet18 at 32 px and at 40 px, trained on valid images named by patient."""
    data = write_lab_dataset(tmp_path_factory.mktemp("patients"))
    patient_named_valid(data)
    storage = tmp_path_factory.mktemp("storage")
    for name, size, epochs in (("a", "32", "2"), ("b", "40", "1")):
        assert train_script.main(["--data", str(data), "--out", str(storage), "--name", name, "--image-size", size,
                                  "-e", epochs, *TINY]) == 0
    return data, storage / "a", storage / "b"


def evaluate(model: Path | list[Path], data: Path, out: Path | None, *extra: str) -> Path:
    models = [str(m) for m in (model if isinstance(model, list) else [model])]
    output = ["--output", str(out)] if out else []
    assert eval_script.main(["-m", *models, "--data", str(data), "-c", *output, *extra]) == 0
    return out


def test_metrics_carry_intervals_and_patients_are_resampled(runs, tmp_path: Path, capsys) -> None:
    data, a, _ = runs
    evaluate(a, data, tmp_path, "--split", "valid")
    m = json.loads((tmp_path / "valid_metrics.json").read_text())
    assert m["bootstrap"] == {"resamples": 2000, "unit": "patients", "seed": 0}
    for key in ("accuracy", "weighted_f1", "macro_recall", "roc_auc"):
        lo, hi = m[key]["ci95"]
        assert lo <= m[key]["value"] <= hi, key
    out = capsys.readouterr().out
    assert f"accuracy {m['accuracy']['value']:.2%} [" in out and "resamples of patients" in out
    for png in ("valid_roc.png", "valid_reliability.png", "valid_confusion.png"):
        with Image.open(tmp_path / png) as image:
            assert image.width > 300, png
    assert 0 <= m["calibration"]["ece"] <= 1 and set(m["operating_point"]) >= {"sensitivity", "specificity",
                                                                                "ppv", "npv"}


def test_patient_table_adds_up_and_follows_the_mean_probability(runs, tmp_path: Path) -> None:
    data, a, _ = runs
    evaluate(a, data, tmp_path, "--split", "valid")
    patients = pd.read_csv(tmp_path / "valid_patients.csv")
    images = pd.read_csv(tmp_path / "valid_probs.csv")
    labels = pd.read_csv(data / "valid.csv")["label"]
    assert list(patients.columns) == ["patient", "images", "correct", "accuracy", *PROBS, "pred", "label"]
    assert patients["images"].sum() == len(images) == 12 and len(patients) == 4
    assert patients["correct"].sum() == (images["pred"] == labels).sum()
    assert (patients["pred"] == (patients["prob_blast"] >= 0.5).astype(int)).all()
    images["patient"] = [Path(i).name.split("_")[1] for i in images["ID"]]
    means = images.groupby("patient")["prob_blast"].mean()
    assert np.allclose(patients.set_index("patient")["prob_blast"].astype(float), means.loc[patients["patient"]])
    m = json.loads((tmp_path / "valid_metrics.json").read_text())
    assert m["patients"]["patients"] == 4 and "value" in m["patients"]["accuracy"]


def test_a_threshold_chosen_on_valid_is_applied_to_test_and_the_kaggle_csv(runs, tmp_path: Path) -> None:
    data, a, _ = runs
    evaluate(a, data, tmp_path, "--split", "test", "--threshold", "youden")
    cut = json.loads((tmp_path / "operating_point.json").read_text())["threshold"]
    valid = pd.read_csv(tmp_path / "valid_probs.csv")  # evaluated although only test was asked for
    labels = pd.read_csv(data / "valid.csv")["label"].to_numpy()
    probs = valid[PROBS].to_numpy()
    youden = lambda t: sum(threshold.operating_point(labels, threshold.predictions(probs, t), t)[k]  # noqa: E731
                           for k in ("sensitivity", "specificity")) - 1
    assert youden(cut) == pytest.approx(max(youden(t) for t in probs[:, 1]))
    test = pd.read_csv(tmp_path / "resnet_18_test_probs.csv")
    # now a threshold that splits the test list, so that applying it shows
    median = float(np.median(test["prob_blast"]))
    evaluate(a, data, tmp_path, "--split", "test", "--threshold", repr(median))
    assert json.loads((tmp_path / "operating_point.json").read_text())["threshold"] == median
    submission = pd.read_csv(tmp_path / "resnet_18_test_a_submission.csv")
    expected = (test["prob_blast"] >= median).astype(int)
    assert submission["label"].tolist() == expected.tolist() and 0 < expected.sum() < len(expected)
    assert submission["ID"].tolist() == pd.read_csv(data / "resnet_18_test.csv")["Path"].tolist()
    evaluate(a, data, tmp_path, "--split", "test")  # a later evaluation reuses the saved threshold
    assert pd.read_csv(tmp_path / "resnet_18_test_a_submission.csv")["label"].tolist() == expected.tolist()


def test_calibration_saves_a_temperature_and_keeps_every_prediction(runs, tmp_path: Path) -> None:
    data, a, _ = runs
    evaluate(a, data, tmp_path / "plain", "--split", "valid", "test", "--bootstrap", "0")
    evaluate(a, data, tmp_path / "cal", "--split", "valid", "test", "--bootstrap", "0", "--calibrate")
    saved = json.loads((tmp_path / "cal" / "temperature.json").read_text())
    assert saved["temperature"] > 0 and saved["after"]["nll"] <= saved["before"]["nll"] + 1e-9
    for split in ("valid", "resnet_18_test"):
        plain, cal = (pd.read_csv(tmp_path / d / f"{split}_probs.csv") for d in ("plain", "cal"))
        assert (plain["pred"] == cal["pred"]).all()
        assert not np.allclose(plain[PROBS], cal[PROBS])
    m = json.loads((tmp_path / "cal" / "valid_metrics.json").read_text())
    assert m["calibration"]["temperature"] == saved["temperature"] and m["accuracy"]["ci95"] is None


def test_an_ensemble_of_a_run_with_itself_has_that_runs_metrics(runs, tmp_path: Path) -> None:
    data, a, _ = runs
    evaluate(a, data, tmp_path / "single", "--split", "valid")
    evaluate([a, a], data, tmp_path / "twice", "--split", "valid")
    single, twice = (json.loads((tmp_path / d / "valid_metrics.json").read_text()) for d in ("single", "twice"))
    for key in ("accuracy", "weighted_f1", "macro_recall", "roc_auc", "confusion", "patients"):
        assert twice[key] == single[key], key


def test_an_ensemble_of_two_runs_averages_their_probabilities(runs) -> None:
    data, a, b = runs
    evaluate(a, data, None)
    evaluate(b, data, None)
    evaluate([a, b], data, None)
    folder = a.parent / "ensemble-a+b"  # named for the ensemble, beside the runs
    ensemble = pd.read_csv(folder / "valid_probs.csv")
    mean = (pd.read_csv(a / "eval" / "valid_probs.csv")[PROBS] + pd.read_csv(b / "eval" / "valid_probs.csv")[PROBS]) / 2
    assert np.allclose(ensemble[PROBS], mean, atol=1e-6)
    assert (folder / "resnet_18_test_ensemble-a+b_submission.csv").is_file()
    members = json.loads((folder / "ensemble.json").read_text())["members"]
    assert [m["image_size"] for m in members] == [32, 40]
    assert {p.name for p in (a / "eval").glob("*_submission.csv")} == {"resnet_18_test_a_submission.csv"}


@pytest.mark.parametrize("flags, message", [(["--bootstrap", "-1"], "--bootstrap must be 0"),
                                            (["--threshold", "best"], "--threshold 'best': use youden")])
def test_bad_evaluation_flags_are_one_line_errors(flags: list[str], message: str, tmp_path: Path, capsys) -> None:
    from core.errors import run_cli

    assert run_cli(eval_script.main, ["-m", str(tmp_path / "missing.pt"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1


def test_an_eval_that_fails_part_way_leaves_the_earlier_outputs_as_they_were(runs: tuple[Path, Path, Path],
                                                                              tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    data, run, _ = runs
    out = evaluate(run, data, tmp_path / "out", "--bootstrap", "0")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert {"valid_metrics.json", "valid_probs.csv"} <= set(before)

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("core.evaluate.save_reliability_png", disk_full)  # after the probabilities are written
    with pytest.raises(OSError):
        eval_script.main(["-m", str(run), "--data", str(data), "-c", "--output", str(out), "--bootstrap", "0",
                          "--seed", "5"])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the staging folder is gone
