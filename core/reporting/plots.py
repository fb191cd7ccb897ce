"""Figures that compare runs: accuracy (or loss) curves per epoch and confusion matrices side by side.

Runs are told apart by their folder names and by colour (one per run, the same in every figure),
never by architecture alone: two ResNet18 runs are two entries.
"""
from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import PercentFormatter  # noqa: E402

from common.errors import UserError  # noqa: E402
from core.evaluation.metrics import draw_confusion, normalise_rows  # noqa: E402
from core.reporting.freshness import refresh_command, stale_reasons  # noqa: E402
from core.runs import is_cv_run, read_config, read_confusion, read_history  # noqa: E402


def run_label(run: Path) -> tuple[str, str, bool]:
    """(architecture key, display name, pretrained?) from config.json, falling back on the folder name."""
    cfg = read_config(run)
    arch = cfg.get("arch") or run.name.split("-")[0].lower()
    pretrained = bool(cfg.get("pretrained"))
    return arch, (cfg.get("model") or arch) + (" pretrained" if pretrained else ""), pretrained


def run_name(run: Path) -> str:
    """What a figure calls a run: its folder name, with the model where the name does not say it."""
    _, model, _ = run_label(run)
    return run.name if model.split()[0].lower() in run.name.lower() else f"{run.name} ({model})"


def run_colour(index: int) -> str:
    """The colour of the ``index``-th run given (matplotlib's ten-colour cycle)."""
    return f"C{index % 10}"


def runs_table(runs: list[Path]) -> pd.DataFrame:
    """One row per run: best valid accuracy, its epoch, epochs run."""
    rows = []
    for run in runs:
        h = read_history(run)
        best = h["valid_acc"].idxmax() if len(h) else None
        rows.append({"run": run.name, "model": run_label(run)[1], "epochs": len(h),
                     "best valid": h["valid_acc"].max() if len(h) else float("nan"),
                     "at epoch": int(h["epoch"][best]) if best is not None else 0,
                     "last train": h["train_acc"].iloc[-1] if len(h) else float("nan")})
    return pd.DataFrame(rows)


def plot_curves(runs: list[Path], metric: str, title: str | None, path: Path) -> None:
    """Train solid, valid dashed, one colour per run, a dot per epoch (a one-epoch run is a visible point);
    a CV run's fold spread shaded (a bar at a single epoch)."""
    col = "acc" if metric == "accuracy" else "loss"
    fig, ax = plt.subplots(figsize=(9, 5.5), layout="constrained")
    histories = [(run, read_history(run)) for run in runs]
    if not any(len(h) for _, h in histories):
        raise UserError("none of the runs has finished an epoch yet; nothing to plot")
    for index, (run, h) in enumerate(histories):
        if not len(h):
            continue
        label, colour = run_name(run), run_colour(index)
        style = {"color": colour, "marker": "o", "markersize": 6 if len(h) == 1 else 3}
        best = h["valid_acc"].idxmax()
        ax.plot(h["epoch"], h[f"train_{col}"], linestyle="-", label=f"{label} train", **style)
        ax.plot(h["epoch"], h[f"valid_{col}"], linestyle="--", markerfacecolor="white",
                label=f"{label} valid (best {h['valid_acc'][best]:.2%} @ {int(h['epoch'][best])})", **style)
        if is_cv_run(run):  # the curves are means over folds (core/cvsummary.cv_history); show min to max
            spread = f"{label} valid, min-max over {int(h['folds'].max())} folds"
            low, high = h[f"valid_{col}_min"], h[f"valid_{col}_max"]
            if len(h) == 1:
                mean = h[f"valid_{col}"]
                ax.errorbar(h["epoch"], mean, yerr=[mean - low, high - mean], fmt="none", ecolor=colour, capsize=6,
                            alpha=0.5, label=spread)
            else:
                ax.fill_between(h["epoch"], low, high, color=colour, alpha=0.15, label=spread)
    last = max(int(h["epoch"].max()) for _, h in histories if len(h))
    ax.set_xlim(0.5, last + 0.5)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    if metric == "accuracy":
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    if last <= 20:
        ax.set_xticks(range(1, last + 1))
    else:
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.set_title(title or f"{metric.capitalize()} per epoch (solid: train, dashed: valid)")
    ax.legend(fontsize=8, loc="best")
    fig.savefig(path, dpi=130)
    plt.close(fig)


@dataclass(frozen=True)
class ConfusionPanel:
    """A run's valid confusion matrix as eval.py left it, or why it is not shown (a stale evaluation)."""

    run: Path
    name: str
    counts: np.ndarray | None = None
    classes: tuple[str, ...] = ()
    stale: str = ""  # why the evaluation does not belong to the run's current best.pt

    @property
    def refresh(self) -> str:
        return refresh_command(self.run, "valid")


def confusion_panels(runs: list[Path]) -> list[ConfusionPanel]:
    """One panel per run that eval.py evaluated on valid; stale evaluations carry their reason instead."""
    panels = []
    for run in runs:
        csv = run / "eval" / "valid_confusion.csv"
        if not csv.is_file():
            continue
        metrics_file = run / "eval" / "valid_metrics.json"
        try:
            metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            metrics = {}  # counts as evaluated before provenance was recorded
        stale = stale_reasons(run, {"valid": metrics if isinstance(metrics, dict) else {}}).get("valid", "")
        if stale:
            panels.append(ConfusionPanel(run, run_name(run), stale=stale))
        else:
            counts, classes = read_confusion(csv)
            panels.append(ConfusionPanel(run, run_name(run), counts, tuple(classes)))
    return panels


def plot_confusions(panels: list[ConfusionPanel], path: Path) -> None:
    """The panels side by side, each titled by its run; a stale one says so and how to refresh it."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), layout="constrained", squeeze=False)
    for ax, panel in zip(axes[0], panels):
        if panel.stale:
            ax.axis("off")
            text = "\n\n".join(textwrap.fill(part, 40) for part in
                               (panel.name, f"stale evaluation: {panel.stale}", f"refresh: {panel.refresh}"))
            ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=9, color="#7d4e00", wrap=True)
            continue
        accuracy = np.trace(panel.counts) / max(panel.counts.sum(), 1)
        draw_confusion(ax, panel.counts, normalise_rows(panel.counts), panel.classes,
                       f"{panel.name}: valid accuracy {accuracy:.2%}")
    fig.savefig(path, dpi=130)
    plt.close(fig)
