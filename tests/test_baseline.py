"""The majority-class baseline beside every accuracy: a model that does not beat it is flagged."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from core.evaluation.baseline import majority_baseline
from core.evaluation.evaluate import EvalSettings, write_split
from data import Split

CLASSES = ("normal", "blast")


def evaluate(tmp_path: Path, right: float) -> dict:
    """write_split on 100 images, 68 of them blasts, for a model right on a share ``right`` of them."""
    labels = np.array([1] * 68 + [0] * 32)
    rng = np.random.default_rng(0)
    wrong = rng.permutation(len(labels))[:round((1 - right) * len(labels))]
    preds = labels.copy()
    preds[wrong] = 1 - preds[wrong]
    probs = np.where(preds[:, None] == np.arange(2), 0.8, 0.2)
    split = Split("test", tuple(Path(f"img{i}.png") for i in range(100)), tuple(labels.tolist()),
                  tuple(f"img{i}.png" for i in range(100)), "a test")
    write_split(split, probs, labels, EvalSettings(tmp_path, CLASSES, "run", "ResNet18", resamples=200))
    return json.loads((tmp_path / "test_metrics.json").read_text())


def test_a_model_at_the_majority_baseline_is_flagged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = evaluate(tmp_path, right=0.69)
    assert m["baseline_accuracy"] == pytest.approx(0.68) and m["baseline_class"] == "blast"
    assert m["baseline_roc_auc"] == 0.5  # saved beside roc_auc, not only printed
    assert m["not_better_than_baseline"] is True
    assert "NOT BETTER than always answering 'blast' (68.00%)" in capsys.readouterr().out


def test_a_model_clearly_above_the_baseline_is_not_flagged(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    m = evaluate(tmp_path, right=0.95)
    assert m["not_better_than_baseline"] is False
    out = capsys.readouterr().out
    assert "baseline: always answering 'blast' scores 68.00%" in out and "NOT BETTER" not in out


def test_without_an_interval_the_accuracy_itself_is_compared() -> None:
    labels = np.array([0, 1, 1, 1])
    assert majority_baseline(labels, CLASSES, 0.75)["not_better_than_baseline"] is True
    assert majority_baseline(labels, CLASSES, {"value": 1.0, "ci95": None})["not_better_than_baseline"] is False
    assert majority_baseline(labels, CLASSES, {"value": 1.0, "ci95": [0.7, 1.0]})["not_better_than_baseline"] is True
