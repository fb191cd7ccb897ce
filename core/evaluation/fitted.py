"""What eval.py fits on valid (a temperature, an operating point), saved with what it was fitted on.

Each saved file holds ``fitted_on`` (see ``provenance``): the checkpoints (path, epoch, content
digest), the TTA, the temperature in force (for the operating point: the probabilities its
threshold was chosen on), the split and that split's data fingerprint. eval.py reuses a file
only while all of these still hold; otherwise it fits again on valid, from the saved rule, and
says why in one line, or refuses in one line where valid has no labels. predict.py and
export.py cannot fit, so they refuse a file that does not match what they run.

Threshold-then-calibrate: the new temperature changes the probabilities, so the saved rule
(``sens=0.95``) is applied again on the calibrated valid probabilities; calibrate-then-threshold
chooses on calibrated ones from the start. Either way the operating point holds on valid.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from common.errors import UserError
from core.checkpoint import checkpoint_digest
from core.evaluation import calibration, threshold
from core.evaluation.threshold import OperatingPoint


@dataclass(frozen=True)
class Fitting:
    """What eval.py is fitting or reusing settings for: the valid predictions and their provenance."""

    out: Path  # where the settings are saved
    classes: tuple[str, ...]
    now: dict[str, Any]  # provenance(...) of the valid predictions, temperature None
    valid: tuple[np.ndarray, np.ndarray] | None  # (probabilities, labels), None where valid has no labels


def checkpoint_records(paths_and_epochs: Sequence[tuple[Path, Any]]) -> list[dict[str, Any]]:
    """``[{"path", "epoch", "digest"}]``: what an evaluation or a fitted setting records of each model."""
    return [{"path": str(path), "epoch": epoch, "digest": checkpoint_digest(path)} for path, epoch in paths_and_epochs]


def provenance(checkpoints: list[dict[str, Any]], tta: str | None, temperature: float | None, split: str,
               data_fingerprint: str | None) -> dict[str, Any]:
    """The ``evaluated`` key of every metrics JSON, and the ``fitted_on`` of every saved setting."""
    return {"checkpoints": checkpoints, "tta": tta, "temperature": temperature, "split": split,
            "data_fingerprint": data_fingerprint}


def mismatch(saved: Any, now: dict[str, Any], temperature: bool) -> str | None:
    """Why a setting fitted on ``saved`` does not belong to ``now`` (None: it does); ``temperature``: compare it too."""
    if not isinstance(saved, dict) or "checkpoints" not in saved:
        return "it does not record what it was fitted on (saved by an older eval.py)"
    if [c.get("digest") for c in saved["checkpoints"]] != [c["digest"] for c in now["checkpoints"]]:
        return (f"it was fitted on {describe_checkpoints(saved['checkpoints'])}, "
                f"not on {describe_checkpoints(now['checkpoints'])}")
    if saved.get("tta") != now["tta"]:
        return f"it was fitted with TTA {saved.get('tta') or 'off'}, this evaluation uses {now['tta'] or 'off'}"
    if saved.get("split") != now["split"]:
        return f"it was fitted on {saved.get('split')}, not {now['split']}"
    then, current = saved.get("data_fingerprint"), now["data_fingerprint"]
    if then and current and then != current:
        return f"the {now['split']} images changed since it was fitted (another data fingerprint)"
    if temperature and not same_temperature(saved.get("temperature"), now["temperature"]):
        return (f"it was chosen on probabilities at temperature {show_temperature(saved.get('temperature'))}, "
                f"these are at {show_temperature(now['temperature'])}")
    return None


def describe_checkpoints(checkpoints: list[dict[str, Any]]) -> str:
    return ", ".join(f"{c.get('path')} (epoch {c.get('epoch')}, digest {c.get('digest')})" for c in checkpoints)


def show_temperature(temperature: float | None) -> str:
    return "none (uncalibrated)" if temperature is None else f"{temperature:.4g}"


def same_temperature(a: float | None, b: float | None) -> bool:
    return (a is None) == (b is None) and (a is None or math.isclose(a, b, rel_tol=1e-6))


def operating_settings(f: Fitting, calibrate: bool, rule: str | None,
                       positive: int | None) -> tuple[float | None, OperatingPoint | None]:
    """(temperature, operating point) for eval.py: fitted on valid when asked (and saved in ``f.out``), else
    read back from there if still fitted on what is evaluated, else fitted again from the saved rule.

    ``positive``: --positive-class as an index (None: the saved one, else class index 1). No operating
    point for more than two classes (the arg-max decides).
    """
    if (calibrate or rule) and f.valid is None:
        raise UserError("--calibrate and --threshold are fitted on the valid split, which has no labels here")
    temperature = fit_and_save_temperature(f) if calibrate else saved_temperature(f)
    if len(f.classes) != 2:
        return temperature, None
    return temperature, choose_operating_point(f, rule, positive, temperature)


def fit_and_save_temperature(f: Fitting) -> float:
    probs, labels = f.valid
    temperature = calibration.fit_temperature(labels, probs)
    calibration.save(f.out, temperature, calibration.quality(labels, probs),
                     calibration.quality(labels, calibration.scale(probs, temperature)),
                     f.now)
    print(f"calibration: temperature {temperature:.3f} fitted on valid -> {f.out / calibration.FILE}")
    return temperature


def saved_temperature(f: Fitting) -> float | None:
    """The saved temperature if it was fitted on what is evaluated now; else refitted (or refused)."""
    saved = calibration.load(f.out)
    if saved is None:
        return None
    path = f.out / calibration.FILE
    reason = mismatch(saved.get("fitted_on"), f.now, temperature=False)
    if reason is None:
        print(f"calibration: temperature {float(saved['temperature']):.3f} from {path} (delete it to stop)")
        return float(saved["temperature"])
    refuse_without_labels(f, path, reason, "--calibrate")
    print(f"calibration: {path}: {reason}; fitting it again on valid")
    return fit_and_save_temperature(f)


def choose_operating_point(f: Fitting, rule: str | None, positive: int | None,
                           temperature: float | None) -> OperatingPoint:
    """--threshold RULE chosen now, else the saved operating point if it still holds, else the saved rule
    chosen again on valid (one line says why), else the default 0.5."""
    now = {**f.now, "temperature": temperature}
    path = f.out / threshold.FILE
    saved = threshold.load(f.out)
    if rule is None and saved is not None:
        saved_positive = threshold.class_index(saved.get("positive_class", threshold.DEFAULT_POSITIVE), f.classes, path)
        reason = mismatch(saved.get("fitted_on"), now, temperature=True)
        if positive is not None and positive != saved_positive:
            reason = f"it was chosen for positive class {f.classes[saved_positive]}, not {f.classes[positive]}"
        if reason is None:
            print(f"operating point: threshold {float(saved['threshold']):.4g} ({saved.get('rule')}) for "
                  f"{f.classes[saved_positive]} from {path}")
            return OperatingPoint(float(saved["threshold"]), saved_positive, str(path))
        if not saved.get("rule"):
            raise UserError(f"{path}: {reason}, and it names no rule to choose it again; choose one with --threshold")
        refuse_without_labels(f, path, reason, "--threshold")
        print(f"operating point: {path}: {reason}; choosing {saved['rule']} again on these valid probabilities")
        rule, positive = saved["rule"], saved_positive if positive is None else positive
    positive = threshold.DEFAULT_POSITIVE if positive is None else positive
    if rule is None:
        return OperatingPoint(threshold.DEFAULT, positive)
    probs, labels = f.valid
    scaled = calibration.scale(probs, temperature) if temperature else probs
    cut = threshold.choose_threshold(rule, labels == positive, scaled[:, positive])
    threshold.save(f.out, rule, cut, f.classes[positive], now)
    print(f"operating point: {rule} on valid{' (calibrated)' if temperature else ''} -> threshold {cut:.4g} "
          f"for {f.classes[positive]} -> {path}")
    return OperatingPoint(cut, positive, str(path))


def refuse_without_labels(f: Fitting, path: Path, reason: str, flag: str) -> None:
    if f.valid is None:
        raise UserError(f"{path}: {reason}; valid has no labels to fit it again: delete it, or run eval.py {flag} "
                        f"where valid is labelled")


def saved_for_inference(folder: Path, checkpoints: list[dict[str, Any]], tta: str | None,
                        classes: Sequence[str]) -> tuple[float | None, OperatingPoint | None]:
    """predict.py and export.py: the temperature and operating point eval.py saved in ``folder`` for exactly
    these checkpoints and TTA; UserError (one line) for a file fitted on anything else (they cannot refit)."""
    now = provenance(checkpoints, tta, None, "valid", None)
    found = calibration.load(folder)
    temperature = None if found is None else float(found["temperature"])
    if found is not None and (reason := mismatch(found.get("fitted_on"), now, temperature=False)):
        raise UserError(f"{folder / calibration.FILE}: {reason}; run eval.py --calibrate again, or delete it")
    point = threshold.load(folder) if len(classes) == 2 else None
    if point is None:
        return temperature, None
    path = folder / threshold.FILE
    if reason := mismatch(point.get("fitted_on"), {**now, "temperature": temperature}, temperature=True):
        raise UserError(f"{path}: {reason}; run eval.py --threshold {point.get('rule') or 'RULE'} again, or delete it")
    positive = threshold.class_index(point.get("positive_class", threshold.DEFAULT_POSITIVE), classes, path)
    return temperature, OperatingPoint(float(point["threshold"]), positive, str(path))
