"""What eval.py writes for one split: probabilities, Kaggle CSV, metrics with intervals, patients, figures.

Metrics JSON (``<split>_metrics.json``): ``accuracy``, ``weighted_f1``, ``macro_recall`` and
``roc_auc`` (two classes) or ``quadratic_kappa`` (grades) are each ``{"value": x, "ci95": [lo, hi]}``
(``ci95`` is null with ``--bootstrap 0`` or where undefined); ``bootstrap`` says how many resamples
of which unit (``patients`` or ``images``); ``patients`` holds the same metrics per patient where
file names carry patient ids (``rule``: how a patient's label and prediction are made, core/evaluation/per_patient.py);
``operating_point`` (two classes: ``threshold``, ``positive_class``, sensitivity, ...) and ``calibration``
as named; ``evaluated`` (core.evaluation.fitted.provenance): the checkpoints (path, epoch, digest), the TTA used
(null: off; ``flips+rot90``, ``none``), the temperature applied, the split and its data fingerprint;
``baseline_accuracy`` (always answering ``baseline_class``, the split's most frequent class) and
``not_better_than_baseline`` (the accuracy's interval does not clear it), core/evaluation/baseline.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from core.evaluation import calibration, threshold
from core.evaluation.baseline import baseline_note, majority_baseline
from core.evaluation.bootstrap import BootstrapPlan, bootstrap_ci, standard_metrics, with_intervals
from core.evaluation.evalfigures import save_curves_png, save_reliability_png
from core.evaluation.metrics import classification_metrics, confusion, save_confusion_png
from core.evaluation.per_patient import MEAN_PROBABILITY, mean_probs, patient_predictions, patient_rule, patient_table
from core.evaluation.threshold import DEFAULT_POSITIVE, OperatingPoint
from core.runs import write_json, write_text_atomic
from data import Split
from data.patients import split_patients

INTERVAL_METRICS = ("accuracy", "weighted_f1", "macro_recall", "roc_auc", "quadratic_kappa")
SELECTED_ON_VALID = ("the epoch (best.pt), and any threshold or temperature, were chosen on valid: its intervals "
                     "are optimistic; a labelled test split gives the unbiased ones")


@dataclass(frozen=True)
class EvalSettings:
    """Everything a split's outputs depend on besides its predictions."""

    out: Path
    classes: tuple[str, ...]
    run_name: str  # carried by every Kaggle CSV's name
    title: str  # e.g. "ResNet18" or "ensemble-a+b", for figure titles
    point: OperatingPoint | None = None  # two classes: the threshold on P(positive); None: arg-max at 0.5
    temperature: float | None = None  # already applied to the probabilities; recorded in the metrics
    resamples: int = 2000
    seed: int = 0
    evaluated: dict[str, Any] | None = None  # fitted.provenance without the split: what was evaluated
    trained_on: dict[str, int] = field(default_factory=dict)  # per test list: images in the run's train list

    @property
    def positive(self) -> int:
        """Two classes: the class index the operating point is about."""
        return self.point.positive if self.point else DEFAULT_POSITIVE


def submission_path(out: Path, split_name: str, run_name: str) -> Path:
    return out / f"{split_name}_{run_name}_submission.csv"


def write_split(split: Split, probs: np.ndarray, labels: np.ndarray, s: EvalSettings) -> dict[str, Any] | None:
    """Write every output of ``split``; returns its metrics (None for an unlabelled split)."""
    preds = threshold.decide(probs, s.point)
    table = pd.DataFrame({"ID": split.ids, **{f"prob_{c}": probs[:, i] for i, c in enumerate(s.classes)},
                          "pred": preds})
    write_text_atomic(s.out / f"{split.name}_probs.csv", table.to_csv(index=False))
    if split.name not in ("train", "valid"):
        submission = submission_path(s.out, split.name, s.run_name)
        write_text_atomic(submission, pd.DataFrame({"ID": split.ids, "label": preds}).to_csv(index=False))
        print(f"{split.name}: Kaggle submission ({len(preds)} rows) {submission.name}")
    if split.labels is None:
        return None
    found = split_patients(split)
    if found.warning:
        print(f"{split.name}: warning: {found.warning}")
    patients = found.ids
    m = scored(labels, probs, preds, s, patients)
    if patients is not None:
        m["patients"] = patient_metrics(split.name, patients, patient_rule(found.pattern), (labels, probs, preds), s)
    if s.trained_on.get(split.name):  # data.saved_splits.count_trained_on
        m["trained_on_images"] = s.trained_on[split.name]
    if split.name == "valid":
        for entry in (m, m.get("patients", {})):
            entry.get("bootstrap", {})["note"] = SELECTED_ON_VALID
    counts, normalised = confusion(labels, preds, len(s.classes))
    m["confusion"], m["confusion_normalised"] = counts.tolist(), normalised.round(4).tolist()
    frame = pd.DataFrame(counts, index=[f"true {c}" for c in s.classes], columns=[f"pred {c}" for c in s.classes])
    write_text_atomic(s.out / f"{split.name}_confusion.csv", frame.to_csv())
    bins = calibration.reliability(labels, probs)
    m["calibration"] = {"ece": calibration.expected_calibration_error(bins), "bins": bins,
                        "temperature": s.temperature}
    if s.evaluated is not None:
        m["evaluated"] = {**s.evaluated, "split": split.name, "data_fingerprint": split.fingerprint()}
    write_json(s.out / f"{split.name}_metrics.json", m)
    write_figures(split.name, labels, probs, m, counts, normalised, s)
    print(format_metrics(m, f"{split.name}:"))
    return m


def scored(labels: np.ndarray, probs: np.ndarray, preds: np.ndarray, s: EvalSettings,
           clusters: np.ndarray | None) -> dict[str, Any]:
    """Point metrics, their bootstrap intervals (resampling ``clusters`` when given) and the operating point."""
    m = classification_metrics(labels, probs, s.classes, preds)
    plan = BootstrapPlan(s.resamples, s.seed, clusters)
    point = {k: m[k] for k in INTERVAL_METRICS if k in m}
    intervals = bootstrap_ci(plan, labels, probs, preds, standard_metrics(len(s.classes))) if s.resamples else {}
    m.update(with_intervals(point, intervals))
    m.update(majority_baseline(labels, s.classes, m["accuracy"]))
    m["bootstrap"] = {"resamples": s.resamples, "unit": plan.unit, "seed": s.seed}
    if len(s.classes) == 2:
        cut = s.point.threshold if s.point else threshold.DEFAULT
        m["operating_point"] = {**threshold.operating_point(labels, preds, cut, s.positive),
                                "positive_class": s.classes[s.positive]}
    return m


def patient_metrics(split_name: str, patients: np.ndarray, rule: str,
                    predicted: tuple[np.ndarray, np.ndarray, np.ndarray], s: EvalSettings) -> dict[str, Any]:
    """``<split>_patients.csv`` and the metrics of the patient-level predictions by ``rule``
    (core.evaluation.per_patient);
    ``predicted`` is the images' (labels, probabilities, predictions)."""
    table = patient_table(patients, *predicted, s.classes)
    patient_probs = mean_probs(table, s.classes)
    pred = patient_predictions(table, rule, s.classes, lambda p: threshold.decide(p, s.point))
    table = table.drop(columns="worst_pred")
    table.insert(len(table.columns) - 1, "pred", pred)
    write_text_atomic(s.out / f"{split_name}_patients.csv", table.to_csv(index=False))
    patient_labels = table["label"].to_numpy()
    each_own = np.arange(len(table))  # one row per patient: resampling rows resamples patients
    m = scored(patient_labels, patient_probs, pred, s, each_own)
    m["patients"] = m.pop("images")
    m["rule"] = rule
    return m


def write_figures(split_name: str, labels: np.ndarray, probs: np.ndarray, m: dict[str, Any], counts: np.ndarray,
                  normalised: np.ndarray, s: EvalSettings) -> None:
    title = f"{s.title} - {split_name}"
    save_confusion_png(counts, normalised, s.classes, f"{title} (accuracy {m['accuracy']['value']:.2%})",
                       s.out / f"{split_name}_confusion.png")
    if len(s.classes) == 2 and s.positive == 0:  # the curves are drawn for class 1: make the positive class 1
        labels, probs, classes = 1 - labels, probs[:, ::-1], s.classes[::-1]
    else:
        classes = s.classes
    save_curves_png(labels, probs, classes, m.get("operating_point"), title, s.out / f"{split_name}_roc.png")
    save_reliability_png(m["calibration"]["bins"], m["calibration"]["ece"], f"{title}: reliability",
                         s.out / f"{split_name}_reliability.png", images=len(labels))


def format_interval(entry: dict[str, Any], percent: bool) -> str:
    """``94.12% [92.80, 95.31]`` or ``0.9412 [0.9280, 0.9531]``; 'n/a' when undefined."""
    value, ci = entry["value"], entry["ci95"]
    if value is None:
        return "n/a"
    if percent:
        return f"{value:.2%}" + (f" [{ci[0] * 100:.2f}, {ci[1] * 100:.2f}]" if ci else "")
    return f"{value:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")


def format_metrics(m: dict[str, Any], title: str) -> str:
    """The terminal summary: metrics with 95% intervals, operating point, calibration, patients, classes."""
    b = m["bootstrap"]
    how = f"95% intervals: {b['resamples']} bootstrap resamples of {b['unit']}" if b["resamples"] else "no intervals"
    lines = [f"{title} {m['images']} images ({how})", "  " + summary_line(m), "  " + baseline_note(m)]
    if b.get("note"):
        lines.append(f"  note: {b['note']}")
    if m.get("trained_on_images"):
        lines.append(f"  WARNING: {m['trained_on_images']} of these images are in the training list of the run: "
                     f"these scores are optimistic")
    op = m.get("operating_point")
    if op:
        show = lambda v: "n/a" if v is None else f"{v:.2%}"  # noqa: E731
        lines.append(f"  at threshold {op['threshold']:.4g} for {op['positive_class']}: sensitivity "
                     f"{show(op['sensitivity'])}   specificity "
                     f"{show(op['specificity'])}   PPV {show(op['ppv'])}   NPV {show(op['npv'])}")
    lines.append(f"  expected calibration error {m['calibration']['ece']:.4f}")
    if "patients" in m:
        p = m["patients"]
        lines.append(f"  per patient ({p['patients']} patients, {p.get('rule', MEAN_PROBABILITY)}): {summary_line(p)}")
    lines.append(f"  {'class':<16}{'precision':>10}{'recall':>10}{'F1':>10}{'support':>10}")
    for name, r in m["per_class"].items():
        lines.append(f"  {name:<16}{r['precision']:>10.4f}{r['recall']:>10.4f}{r['f1-score']:>10.4f}"
                     f"{int(r['support']):>10d}")
    return "\n".join(lines)


def summary_line(m: dict[str, Any]) -> str:
    names: Sequence[tuple[str, str]] = (("accuracy", "accuracy"), ("weighted_f1", "weighted F1"),
                                        ("macro_recall", "macro recall"), ("roc_auc", "ROC-AUC"),
                                        ("quadratic_kappa", "QW kappa"))
    return "   ".join(f"{label} {format_interval(m[key], key == 'accuracy')}" for key, label in names if key in m)
