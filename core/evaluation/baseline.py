"""The majority-class baseline: what always answering the most frequent class would score.

A 69% accuracy means little on a split that is 68% blasts. Every evaluation records the accuracy
of that constant answer beside its own and is flagged when its 95% interval does not clear it
(without an interval: when the accuracy itself does not).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

CHANCE_AUC = 0.5  # the ROC-AUC of any constant or random answer


def majority_baseline(labels: np.ndarray, classes: Sequence[str], accuracy: Any) -> dict[str, Any]:
    """``baseline_accuracy``, ``baseline_class``, ``baseline_roc_auc`` (0.5: any constant or random answer)
    and ``not_better_than_baseline`` for labels ``labels``
    (class indices) and ``accuracy`` (a number or ``{"value": x, "ci95": [lo, hi] | None}``)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(classes))
    majority = int(counts.argmax())
    share = float(counts[majority] / max(counts.sum(), 1))
    value, ci = (accuracy.get("value"), accuracy.get("ci95")) if isinstance(accuracy, dict) else (accuracy, None)
    lowest = ci[0] if ci else value
    return {"baseline_accuracy": share, "baseline_class": classes[majority], "baseline_roc_auc": CHANCE_AUC,
            "not_better_than_baseline": bool(lowest is not None and lowest <= share)}


def baseline_note(m: dict[str, Any]) -> str:
    """One line for a console or report: the baseline, and the warning when the model does not beat it
    ('' for metrics written before baselines were recorded)."""
    if "baseline_accuracy" not in m:
        return ""
    answer = f"always answering '{m.get('baseline_class', 'the majority class')}'"
    auc = f"; ROC-AUC of a guess {m.get('baseline_roc_auc', CHANCE_AUC)}" if "roc_auc" in m else ""
    if m.get("not_better_than_baseline"):
        return (f"NOT BETTER than {answer} ({m['baseline_accuracy']:.2%}): the accuracy (its 95% interval) "
                f"does not clear it{auc}")
    return f"baseline: {answer} scores {m['baseline_accuracy']:.2%}{auc}"
