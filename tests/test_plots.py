"""plot.py's figures tell runs apart: named by run folder, a colour per run, every epoch a visible point."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest

import plot
from core.checkpoint import checkpoint_digest
from core.reporting.plots import confusion_panels, plot_confusions, plot_curves
from test_report import CONFIG, METRICS, make_run


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> list[plt.Figure]:
    """The figures core.reporting.plots draws, kept open for the test to inspect."""
    kept: list[plt.Figure] = []
    monkeypatch.setattr("core.reporting.plots.plt.close", kept.append)
    return kept


def test_two_runs_of_one_architecture_get_different_titles_and_colours(tmp_path: Path,
                                                                       figures: list[plt.Figure]) -> None:
    runs = [make_run(tmp_path, name, [0.5, 0.75], metrics={"valid": METRICS}) for name in ("ResNet18-a", "ResNet18-b")]
    plot_curves(runs, "accuracy", None, tmp_path / "accuracy.png")
    plot_confusions(confusion_panels(runs), tmp_path / "confusion.png")
    curves, matrices = figures
    lines = curves.axes[0].get_lines()
    assert [line.get_label().split()[0] for line in lines] == ["ResNet18-a"] * 2 + ["ResNet18-b"] * 2
    assert lines[0].get_color() == lines[1].get_color() != lines[2].get_color() == lines[3].get_color()
    titles = [ax.get_title() for ax in matrices.axes if ax.get_title()]
    assert [t.split(":")[0] for t in titles] == ["ResNet18-a", "ResNet18-b"]


def test_a_one_epoch_history_plots_a_point(tmp_path: Path, figures: list[plt.Figure]) -> None:
    plot_curves([make_run(tmp_path, "short", [0.75])], "accuracy", None, tmp_path / "accuracy.png")
    ax = figures[0].axes[0]
    for line in ax.get_lines():
        assert list(line.get_xdata()) == [1] and line.get_marker() == "o" and line.get_markersize() >= 5
    assert ax.get_xlim() == (0.5, 1.5)


def test_a_one_epoch_cv_run_draws_its_mean_and_fold_spread(tmp_path: Path, figures: list[plt.Figure]) -> None:
    cv = tmp_path / "ResNet18-cv2"
    for k, acc in enumerate((0.6, 0.8)):
        make_run(cv, f"fold_{k}", [acc])
    (cv / "cv.json").write_text(json.dumps({"folds": 2}))
    (cv / "config.json").write_text(json.dumps(CONFIG))
    plot_curves([cv], "accuracy", None, tmp_path / "accuracy.png")
    ax = figures[0].axes[0]
    valid = next(line for line in ax.get_lines() if " valid (" in line.get_label())
    assert list(valid.get_ydata()) == [pytest.approx(0.7)] and valid.get_marker() == "o"
    spread = next(c for c in ax.containers if "min-max over 2 folds" in c.get_label())
    assert spread.lines[2][0].get_segments()[0][:, 1].tolist() == pytest.approx([0.6, 0.8])


def test_long_run_names_are_wrapped_not_clipped(tmp_path: Path, figures: list[plt.Figure]) -> None:
    name = "ensemble-ResNet18-20261205-1210+ResNet50-20261205-1230+ResNet152-20261205-1300"
    plot_confusions(confusion_panels([make_run(tmp_path, name, [0.5], metrics={"valid": METRICS})]),
                    tmp_path / "confusion.png")
    title = figures[0].axes[0].get_title()
    assert "\n" in title and title.replace("\n", "").startswith(name[:30])


def test_plot_marks_a_stale_evaluation_and_names_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             figures: list[plt.Figure]) -> None:
    run = make_run(tmp_path, "ResNet18", [0.5, 0.75], metrics={"valid": METRICS})  # no "evaluated": stale
    (run / "best.pt").write_bytes(b"the weights of epoch 2")
    assert plot.main(["-f", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"{run}: valid evaluation is stale" in out and f"python eval.py -m {run} --split valid" in out
    texts = " ".join(t.get_text() for t in figures[-1].axes[0].texts)
    assert "stale evaluation" in texts and "81.25%" not in texts


def test_plot_shows_an_evaluation_of_the_current_best_checkpoint(tmp_path: Path) -> None:
    run = make_run(tmp_path, "ResNet18", [0.5, 0.75])
    (run / "best.pt").write_bytes(b"the weights of epoch 2")
    evaluated = {"checkpoints": [{"path": str(run / "best.pt"), "epoch": 2,
                                  "digest": checkpoint_digest(run / "best.pt")}], "tta": None, "temperature": None,
                 "split": "valid"}
    (run / "eval" / "valid_metrics.json").write_text(json.dumps({**METRICS, "evaluated": evaluated}))
    pd.DataFrame([[6, 2], [1, 7]], index=["true normal", "true blast"],
                 columns=["pred normal", "pred blast"]).to_csv(run / "eval" / "valid_confusion.csv")
    panels = confusion_panels([run])
    assert len(panels) == 1 and not panels[0].stale and panels[0].counts.sum() == 16
