"""eval.py end to end: intervals, per-patient results, the operating point, calibration and ensembles."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import eval as eval_script
import predict as predict_script
import train as train_script
from conftest import write_lab_dataset
from common.errors import run_cli
from core.checkpoint import checkpoint_digest
from core.evaluation import threshold
from core.evaluation.evaluate import SELECTED_ON_VALID

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
    assert m["bootstrap"] == {"resamples": 2000, "unit": "patients", "seed": 0, "note": SELECTED_ON_VALID}
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
    called = lambda t: threshold.decide(probs, threshold.OperatingPoint(t))  # noqa: E731
    youden = lambda t: sum(threshold.operating_point(labels, called(t), t)[k]  # noqa: E731
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
    from common.errors import run_cli

    assert run_cli(eval_script.main, ["-m", str(tmp_path / "missing.pt"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1


def metrics(folder: Path, split: str = "valid") -> dict:
    return json.loads((folder / f"{split}_metrics.json").read_text())


def test_last_pt_and_tta_evaluations_go_to_their_own_folders(runs, capsys) -> None:
    data, a, _ = runs
    for model, flags in ((a, []), (a / "last.pt", []), (a, ["--tta"]), (a / "last.pt", ["--tta"])):
        evaluate(model, data, None, "--split", "valid", "--bootstrap", "0", *flags)
    seen = {}
    rotated = "flips+rot90"  # run a trained with --augment rotate (the lab layout's default)
    for folder, checkpoint, tta in (("eval", "best.pt", None), ("eval-last", "last.pt", None),
                                    ("eval-tta", "best.pt", rotated), ("eval-last-tta", "last.pt", rotated)):
        evaluated = metrics(a / folder)["evaluated"]
        (record,) = evaluated["checkpoints"]
        assert record["path"] == str(a / checkpoint) and record["digest"] == checkpoint_digest(a / checkpoint)
        assert evaluated["tta"] == tta and evaluated["split"] == "valid" and evaluated["temperature"] is None
        seen[folder] = pd.read_csv(a / folder / "valid_probs.csv")[PROBS].to_numpy()
    assert metrics(a / "eval")["evaluated"]["checkpoints"][0]["epoch"] == 1  # best of 2 epochs, not the last
    assert not np.allclose(seen["eval"], seen["eval-last"]) and not np.allclose(seen["eval"], seen["eval-tta"])
    assert "TTA flips+rot90" in capsys.readouterr().out


def copy_run(run: Path, to: Path, checkpoint: str = "best.pt") -> Path:
    """A run folder holding ``run``'s ``checkpoint`` as its best.pt, so that default outputs land in tmp."""
    to.mkdir(parents=True, exist_ok=True)
    shutil.copy(run / checkpoint, to / "best.pt")
    shutil.copy(run / "config.json", to / "config.json")
    return to


@pytest.mark.parametrize("first, then", [("--threshold", "--calibrate"), ("--calibrate", "--threshold")])
def test_threshold_and_calibration_in_either_order_leave_an_operating_point_that_holds_on_valid(
        runs, tmp_path: Path, first: str, then: str, capsys) -> None:
    data, a, _ = runs
    flag = {"--threshold": ["--threshold", "sens=0.9"], "--calibrate": ["--calibrate"]}
    evaluate(a, data, tmp_path, "--split", "valid", "--bootstrap", "0", *flag[first])
    evaluate(a, data, tmp_path, "--split", "valid", "--bootstrap", "0", *flag[then])
    out = capsys.readouterr().out
    saved = json.loads((tmp_path / "operating_point.json").read_text())
    temperature = json.loads((tmp_path / "temperature.json").read_text())["temperature"]
    assert abs(np.log(temperature)) > 0.01  # the calibration moved the probabilities
    assert saved["fitted_on"]["temperature"] == pytest.approx(temperature)
    valid = pd.read_csv(tmp_path / "valid_probs.csv")  # calibrated probabilities
    labels = pd.read_csv(data / "valid.csv")["label"].to_numpy()
    assert saved["threshold"] == pytest.approx(threshold.choose_threshold("sens=0.9", labels == 1,
                                                                          valid["prob_blast"].to_numpy()), rel=1e-6)
    assert metrics(tmp_path)["operating_point"]["sensitivity"] >= 0.9
    assert ("choosing sens=0.9 again on these valid probabilities" in out) == (first == "--threshold")


def test_positive_class_by_name_is_saved_with_the_operating_point_and_used_by_predict(runs, tmp_path: Path) -> None:
    data, a, _ = runs
    run = copy_run(a, tmp_path / "run")
    evaluate(run, data, None, "--split", "valid", "--bootstrap", "0", "--threshold", "youden",
             "--positive-class", "normal")
    saved = json.loads((run / "eval" / "operating_point.json").read_text())
    assert saved["positive_class"] == "normal"
    valid = pd.read_csv(run / "eval" / "valid_probs.csv")
    labels = pd.read_csv(data / "valid.csv")["label"].to_numpy()
    cut = threshold.choose_threshold("youden", labels == 0, valid["prob_normal"].to_numpy())
    assert saved["threshold"] == pytest.approx(cut, rel=1e-6)
    prob_normal = valid["prob_normal"].to_numpy(np.float32)  # as computed: the threshold is one of them
    assert (valid["pred"] == np.where(prob_normal >= np.float32(cut), 0, 1)).all()
    op = metrics(run / "eval")["operating_point"]
    assert op["positive_class"] == "normal" and op["tp"] == int(((valid["pred"] == 0) & (labels == 0)).sum())
    assert predict_script.main(["-m", str(run), str(data / "valid.csv"), "-o", str(tmp_path / "p.csv"),
                                "--device", "cpu"]) == 0
    predicted = pd.read_csv(tmp_path / "p.csv")["prediction"]
    assert list(predicted) == list(np.array(["normal", "blast"])[valid["pred"]])


def test_settings_fitted_on_another_checkpoint_are_refused_by_predict_and_refitted_by_eval(
        runs, tmp_path: Path, capsys) -> None:
    data, a, _ = runs
    run = copy_run(a, tmp_path / "run")
    evaluate(run, data, None, "--split", "valid", "--bootstrap", "0", "--threshold", "youden", "--calibrate")
    shutil.copy(a / "last.pt", run / "best.pt")  # the run's best.pt changed (a resume found a better epoch)
    capsys.readouterr()
    assert run_cli(predict_script.main, ["-m", str(run), str(data / "valid"), "-o", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "temperature.json: it was fitted on" in err and "not on" in err
    evaluate(run, data, None, "--split", "valid", "--bootstrap", "0")
    out = capsys.readouterr().out
    assert "temperature.json: it was fitted on" in out and "fitting it again on valid" in out
    assert "choosing youden again" in out
    digest = checkpoint_digest(run / "best.pt")
    for name in ("temperature.json", "operating_point.json"):
        assert json.loads((run / "eval" / name).read_text())["fitted_on"]["checkpoints"][0]["digest"] == digest
    assert metrics(run / "eval")["evaluated"]["checkpoints"][0]["digest"] == digest
    assert run_cli(predict_script.main, ["-m", str(run), str(data / "valid"), "-o", str(tmp_path / "p.csv")]) == 0


def test_tta_of_an_upright_model_uses_no_flips(runs, tmp_path: Path, capsys) -> None:
    data, a, _ = runs
    run = copy_run(a, tmp_path / "upright")
    ckpt = torch.load(run / "best.pt", weights_only=True)
    ckpt["config"]["augment"] = "upright"  # as trained on chest X-rays: never saw a flip
    torch.save(ckpt, run / "best.pt")
    evaluate(run, data, None, "--split", "valid", "--bootstrap", "0")
    evaluate(run, data, None, "--split", "valid", "--bootstrap", "0", "--tta")
    assert "TTA none: --augment upright saw no flips" in capsys.readouterr().out
    assert metrics(run / "eval-tta")["evaluated"]["tta"] == "none"
    plain, tta = (pd.read_csv(run / d / "valid_probs.csv")[PROBS].to_numpy() for d in ("eval", "eval-tta"))
    np.testing.assert_array_equal(tta, plain)


def test_an_eval_that_fails_part_way_leaves_the_earlier_outputs_as_they_were(runs: tuple[Path, Path, Path],
                                                                              tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    data, run, _ = runs
    out = evaluate(run, data, tmp_path / "out", "--bootstrap", "0")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert {"valid_metrics.json", "valid_probs.csv"} <= set(before)

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("core.evaluation.evaluate.save_reliability_png", disk_full)  # after the probabilities are written
    with pytest.raises(OSError):
        eval_script.main(["-m", str(run), "--data", str(data), "-c", "--output", str(out), "--bootstrap", "0",
                          "--seed", "5"])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the staging folder is gone
