"""Figures that compare runs: accuracy (or loss) curves per epoch and confusion matrices side by side."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import PercentFormatter  # noqa: E402

from core.errors import UserError  # noqa: E402
from core.metrics import draw_confusion, normalise_rows  # noqa: E402
from core.runs import is_cv_run, read_config, read_confusion, read_history  # noqa: E402

ARCH_COLOURS = {"resnet18": "tab:blue", "resnet34": "tab:green", "resnet50": "tab:orange",
                "resnet101": "tab:purple", "resnet152": "tab:red"}


def run_label(run: Path) -> tuple[str, str, bool]:
    """(architecture key, display name, pretrained?) from config.json, falling back on the folder name."""
    cfg = read_config(run)
    arch = cfg.get("arch") or run.name.split("-")[0].lower()
    pretrained = bool(cfg.get("pretrained"))
    return arch, (cfg.get("model") or arch) + (" pretrained" if pretrained else ""), pretrained


def summary(runs: list[Path]) -> pd.DataFrame:
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
    """Train solid, valid dashed, one colour per architecture; pretrained runs marked with dots."""
    col = "acc" if metric == "accuracy" else "loss"
    fig, ax = plt.subplots(figsize=(9, 5.5), layout="constrained")
    seen: dict[str, int] = {}
    histories = [(run, read_history(run)) for run in runs]
    if not any(len(h) for _, h in histories):
        raise UserError("none of the runs has finished an epoch yet; nothing to plot")
    for run, h in histories:
        if not len(h):
            continue
        arch, name, pretrained = run_label(run)
        repeat = seen[name] = seen.get(name, 0) + 1
        label = name if repeat == 1 else f"{name} ({run.name})"
        colour = ARCH_COLOURS.get(arch, None)
        style = {"color": colour, "marker": "o" if pretrained else None, "markersize": 3,
                 "alpha": 1.0 if repeat == 1 else 0.6}
        best = h["valid_acc"].idxmax()
        ax.plot(h["epoch"], h[f"train_{col}"], linestyle="-", label=f"{label} train", **style)
        ax.plot(h["epoch"], h[f"valid_{col}"], linestyle="--",
                label=f"{label} valid (best {h['valid_acc'][best]:.2%} @ {int(h['epoch'][best])})", **style)
        if is_cv_run(run):  # the curves are means over folds (core/cvsummary.cv_history); shade min to max
            ax.fill_between(h["epoch"], h[f"valid_{col}_min"], h[f"valid_{col}_max"], color=colour, alpha=0.15,
                            label=f"{label} valid, min-max over {int(h['folds'].max())} folds")
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    if metric == "accuracy":
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.set_title(title or f"{metric.capitalize()} per epoch (solid: train, dashed: valid)")
    ax.legend(fontsize=8, loc="lower right" if metric == "accuracy" else "upper right")
    fig.savefig(path, dpi=130)
    plt.close(fig)


def plot_confusions(runs: list[Path], path: Path) -> bool:
    """The valid confusion matrices that eval.py left in the runs, side by side; False if none."""
    found = []
    for run in runs:
        csv = run / "eval" / "valid_confusion.csv"
        if csv.is_file():
            found.append((run_label(run)[1], *read_confusion(csv)))
    if not found:
        return False
    fig, axes = plt.subplots(1, len(found), figsize=(4.2 * len(found), 4.2), layout="constrained", squeeze=False)
    for ax, (name, counts, classes) in zip(axes[0], found):
        normalised = normalise_rows(counts)
        accuracy = np.trace(counts) / max(counts.sum(), 1)
        draw_confusion(ax, counts, normalised, classes, f"{name}: valid accuracy {accuracy:.2%}")
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return True
