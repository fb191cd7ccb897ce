"""Confidence intervals, patients, operating points and calibration, on constructed predictions (no model)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score, recall_score, roc_auc_score

from common.errors import UserError
from core.evaluation import calibration, threshold
from core.evaluation.bootstrap import (BootstrapPlan, accuracy, bootstrap_ci, confusions, macro_recall,
                                       quadratic_kappa, roc_auc, standard_metrics, weighted_f1, with_intervals)
from core.evaluation.metrics import classification_metrics
from core.evaluation.per_patient import mean_probs, patient_predictions, patient_rule, patient_table
from data import RETINOPATHY_CLASSES, open_data
from data.patients import find_patients, patient_ids, split_patients


def noisy_predictions(n: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities that are right about 75% of the time, with tied scores."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    probs = rng.dirichlet(np.ones(classes), n)
    probs[np.arange(n), labels] += 1.2 / classes
    return labels, np.round(probs / probs.sum(axis=1, keepdims=True), 2)


@pytest.mark.parametrize("classes", [2, 5])
def test_vectorised_metrics_equal_scikit_learn_on_a_resample(classes: int) -> None:
    labels, probs = noisy_predictions(500, classes)
    preds = probs.argmax(axis=1)
    drawn = np.random.default_rng(1).integers(0, 500, 500)
    weights = np.bincount(drawn, minlength=500)[None].astype(np.float32)
    cm = confusions(weights, labels, preds, classes).astype(np.float64)
    y, p = labels[drawn], preds[drawn]
    assert accuracy(cm)[0] == pytest.approx(accuracy_score(y, p))
    assert weighted_f1(cm)[0] == pytest.approx(f1_score(y, p, average="weighted"))
    assert macro_recall(cm)[0] == pytest.approx(recall_score(y, p, average="macro"))
    if classes == 2:
        assert roc_auc(weights, labels, probs[:, 1])[0] == pytest.approx(roc_auc_score(y, probs[drawn, 1]))
    else:
        assert quadratic_kappa(cm)[0] == pytest.approx(cohen_kappa_score(y, p, weights="quadratic"))


@pytest.mark.parametrize("classes", [2, 5])
def test_intervals_of_an_imperfect_classifier_hold_the_estimate_and_have_width(classes: int) -> None:
    for seed in range(5):
        labels, probs = noisy_predictions(60, classes, seed)
        preds = probs.argmax(axis=1)
        point = {"accuracy": accuracy_score(labels, preds), "weighted_f1": f1_score(labels, preds, average="weighted"),
                 "macro_recall": recall_score(labels, preds, average="macro")}
        point |= ({"roc_auc": roc_auc_score(labels, probs[:, 1])} if classes == 2 else
                  {"quadratic_kappa": cohen_kappa_score(labels, preds, weights="quadratic")})
        intervals = bootstrap_ci(BootstrapPlan(500, seed), labels, probs, preds, standard_metrics(classes))
        for name, entry in with_intervals(point, intervals).items():
            lo, hi = entry["ci95"]
            assert lo <= entry["value"] <= hi, name
            assert hi - lo > 0, name  # an imperfect classifier on 60 images is uncertain


def test_a_perfect_classifier_has_the_accuracy_interval_one_to_one() -> None:
    labels = np.array([0, 1] * 50)
    probs = np.eye(2)[labels] * 0.8 + 0.1
    intervals = bootstrap_ci(BootstrapPlan(300), labels, probs, labels, standard_metrics(2))
    assert intervals["accuracy"] == (1.0, 1.0)
    assert intervals["roc_auc"] == (1.0, 1.0)


def test_a_perfect_classifier_has_macro_recall_one_to_one_whatever_class_a_resample_or_the_data_lacks() -> None:
    # 7 patients, 2 of class 1: about a third of unstratified patient resamples would hold no class 1;
    # class 2 is absent from the data altogether.
    patients = np.repeat(np.arange(7), 3)
    labels = np.repeat([0, 0, 0, 0, 0, 1, 1], 3)
    probs = np.eye(3)[labels]
    intervals = bootstrap_ci(BootstrapPlan(500, clusters=patients), labels, probs, labels, standard_metrics(3))
    assert classification_metrics(labels, probs, ("a", "b", "c"))["macro_recall"] == 1.0
    assert intervals["macro_recall"] == (1.0, 1.0)


def test_a_skewed_interval_is_reported_as_it_is_not_stretched_to_the_estimate() -> None:
    assert with_intervals({"accuracy": 0.9}, {"accuracy": (0.5, 0.8)}) == {"accuracy": {"value": 0.9,
                                                                                        "ci95": [0.5, 0.8]}}


def test_resampling_correlated_patients_gives_a_wider_interval_than_resampling_images() -> None:
    # 30 patients of 10 cells each; a patient's cells are all right or all wrong.
    rng = np.random.default_rng(0)
    patients = np.repeat(np.arange(30), 10)
    labels = np.repeat(rng.integers(0, 2, 30), 10)
    right = np.repeat(rng.random(30) < 0.7, 10)
    preds = np.where(right, labels, 1 - labels)
    probs = np.eye(2)[preds] * 0.6 + 0.2
    metrics = {"accuracy": standard_metrics(2)["accuracy"]}
    lo_i, hi_i = bootstrap_ci(BootstrapPlan(2000), labels, probs, preds, metrics)["accuracy"]
    lo_p, hi_p = bootstrap_ci(BootstrapPlan(2000, clusters=patients), labels, probs, preds, metrics)["accuracy"]
    assert BootstrapPlan(clusters=patients).unit == "patients" and BootstrapPlan().unit == "images"
    assert hi_p - lo_p > 2 * (hi_i - lo_i)


def test_bootstrap_is_seeded() -> None:
    labels, probs = noisy_predictions(80, 2)
    run = lambda seed: bootstrap_ci(BootstrapPlan(200, seed), labels, probs, probs.argmax(1), standard_metrics(2))  # noqa: E731
    assert run(3) == run(3) and run(3) != run(4)


def test_patient_ids_come_from_cnmc_and_retina_file_names_only() -> None:
    cnmc = [Path("a/UID_11_10_1_all.bmp"), Path("UID_H10_3_2_hem.bmp"), Path("UID_11_2_4_all.bmp")]
    assert patient_ids(cnmc).tolist() == ["11", "H10", "11"]
    assert patient_ids([Path("10_left.jpeg"), Path("10_right.jpeg"), Path("7_left.jpeg")]).tolist() == \
        ["10", "10", "7"]
    assert patient_ids([Path("0.bmp"), Path("1.bmp")]) is None


def test_a_partial_patient_id_match_warns_with_counts_and_groups_the_rest_by_image() -> None:
    names = [Path("UID_11_10_1_all.bmp"), Path("UID_11_2_4_all.bmp"), Path("UID_H3_1_1_hem.bmp"), Path("extra.bmp")]
    found = find_patients(names)
    assert found.ids.tolist()[:3] == ["11", "11", "H3"] and found.ids[3] not in found.ids[:3]
    assert "3 of 4 file names follow the C-NMC" in found.warning and "other 1 are grouped by image" in found.warning
    assert find_patients(names[:3]).warning is None


def test_kaggle_preliminary_test_keeps_its_patient_ids(tmp_path: Path) -> None:
    from test_dataloader import make_kaggle

    test = open_data(make_kaggle(tmp_path)).split("test")
    assert split_patients(test).ids.tolist() == ["5", "H4", "5"]


def test_a_retina_patient_is_labelled_and_predicted_by_the_worse_eye() -> None:
    found = find_patients([Path("10_left.jpeg"), Path("10_right.jpeg"), Path("7_left.jpeg"), Path("7_right.jpeg")])
    labels = np.array([0, 2, 1, 1])
    probs = np.array([[0.9, 0.0, 0.0, 0.1, 0.0], [0.2, 0.0, 0.3, 0.5, 0.0], [0.0, 1.0, 0.0, 0.0, 0.0],
                      [0.1, 0.5, 0.4, 0.0, 0.0]])  # patient 10: eyes predicted 0 and 3, mean arg-max 0
    table = patient_table(found.ids, labels, probs, probs.argmax(axis=1), RETINOPATHY_CLASSES)
    rule = patient_rule(found.pattern)
    pred = patient_predictions(table, rule, RETINOPATHY_CLASSES, lambda p: p.argmax(axis=1))
    assert rule == "worse eye" and table["patient"].tolist() == ["10", "7"]
    assert table["label"].tolist() == [2, 1] and pred.tolist() == [3, 1]
    assert patient_rule(find_patients([Path("UID_11_10_1_all.bmp")]).pattern) == "mean probability"


def test_patient_counts_add_up_and_the_prediction_follows_the_mean_probability() -> None:
    patients = np.array(["a", "a", "a", "b", "b", "c"])
    labels = np.array([1, 1, 1, 0, 0, 1])
    probs = np.array([[0.02, 0.98], [0.6, 0.4], [0.6, 0.4], [0.6, 0.4], [0.55, 0.45], [0.45, 0.55]])
    preds = probs.argmax(axis=1)
    table = patient_table(patients, labels, probs, preds, ("normal", "blast"))
    assert table["images"].sum() == len(labels) and table["correct"].sum() == (preds == labels).sum()
    row_a = table.set_index("patient").loc["a"]
    assert row_a["images"] == 3 and row_a["correct"] == 1 and row_a["prob_blast"] == pytest.approx(1.78 / 3)
    # patient a: only 1 of 3 cells called blast, but the mean probability (0.59) says blast
    patient_probs = mean_probs(table, ("normal", "blast"))
    assert threshold.decide(patient_probs, threshold.OperatingPoint(0.5)).tolist() == [1, 0, 1]
    assert threshold.decide(patient_probs, threshold.OperatingPoint(0.42)).tolist() == [1, 1, 1]


def test_youden_picks_the_threshold_maximising_sensitivity_plus_specificity() -> None:
    labels, probs = noisy_predictions(300, 2, seed=7)
    chosen = threshold.choose_threshold("youden", labels, probs[:, 1])

    def youden(t: float) -> float:
        op = threshold.operating_point(labels, threshold.decide(probs, threshold.OperatingPoint(t)), t)
        return op["sensitivity"] + op["specificity"] - 1

    assert youden(chosen) == pytest.approx(max(youden(t) for t in np.unique(probs[:, 1])))
    assert youden(chosen) > youden(0.5) - 1e-12


def test_sensitivity_rule_keeps_the_sensitivity_and_is_as_specific_as_possible() -> None:
    labels, probs = noisy_predictions(300, 2, seed=8)
    chosen = threshold.choose_threshold("sens=0.95", labels, probs[:, 1])
    called = lambda t: threshold.decide(probs, threshold.OperatingPoint(t))  # noqa: E731
    sens = lambda t: threshold.operating_point(labels, called(t), t)["sensitivity"]  # noqa: E731
    assert sens(chosen) >= 0.95
    higher = np.unique(probs[:, 1])[np.unique(probs[:, 1]) > chosen]
    assert sens(higher.min()) < 0.95


@pytest.mark.parametrize("rule", ["yuden", "sens=1.5", "1.2", "sens=0"])
def test_bad_threshold_rules_are_one_line_errors(rule: str) -> None:
    with pytest.raises(UserError, match="--threshold"):
        threshold.check_rule(rule)


def test_temperature_scaling_recovers_an_overconfident_models_temperature_and_keeps_argmax() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (4000, 3))
    honest = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(3, p=p) for p in honest])
    overconfident = calibration.scale(honest, 1 / 2.5)  # logits multiplied by 2.5
    fitted = calibration.fit_temperature(labels, overconfident)
    assert fitted == pytest.approx(2.5, rel=0.1)
    fixed = calibration.scale(overconfident, fitted)
    assert (fixed.argmax(axis=1) == overconfident.argmax(axis=1)).all()
    ece = lambda p: calibration.expected_calibration_error(calibration.reliability(labels, p))  # noqa: E731
    assert ece(fixed) < ece(overconfident) / 3


def test_expected_calibration_error_of_known_bins() -> None:
    # 10 images at confidence 0.9 of which 6 are right: ECE = |0.6 - 0.9| = 0.3.
    labels = np.array([0] * 6 + [1] * 4)
    probs = np.tile([0.9, 0.1], (10, 1))
    assert calibration.expected_calibration_error(calibration.reliability(labels, probs)) == pytest.approx(0.3)


def test_a_fitted_setting_stops_holding_when_checkpoint_tta_data_or_temperature_change() -> None:
    from core.evaluation.fitted import mismatch, provenance

    checkpoint = [{"path": "run/best.pt", "epoch": 3, "digest": "aaaa"}]
    fitted_on = provenance(checkpoint, None, None, "valid", "data1")
    assert mismatch(fitted_on, fitted_on, temperature=True) is None
    copied = [{"path": "elsewhere/best.pt", "epoch": 3, "digest": "aaaa"}]  # the same bytes: still the same model
    assert mismatch(fitted_on, provenance(copied, None, None, "valid", "data1"), temperature=True) is None
    resumed = [{"path": "run/best.pt", "epoch": 3, "digest": "bbbb"}]
    assert "not on run/best.pt (epoch 3, digest bbbb)" in mismatch(fitted_on, provenance(resumed, None, None, "valid",
                                                                                          "data1"), temperature=True)
    assert "TTA off" in mismatch(fitted_on, provenance(checkpoint, "flips+rot90", None, "valid", "data1"), True)
    assert "images changed" in mismatch(fitted_on, provenance(checkpoint, None, None, "valid", "data2"), True)
    calibrated = provenance(checkpoint, None, 1.7, "valid", "data1")
    assert "temperature none (uncalibrated)" in mismatch(fitted_on, calibrated, temperature=True)
    assert mismatch(fitted_on, calibrated, temperature=False) is None  # a temperature is fitted on raw probabilities
    assert "older eval.py" in mismatch("valid", fitted_on, temperature=False)  # the old "fitted_on": "valid"


def test_the_report_leads_with_labelled_test_intervals_and_puts_valid_last(tmp_path: Path) -> None:
    from core.reporting.evalfolder import read_metrics

    for split in ("valid", "test", "resnet_18_test"):
        (tmp_path / f"{split}_metrics.json").write_text("{}")
    assert list(read_metrics(tmp_path)) == ["resnet_18_test", "test", "valid"]
