"""Reading an eval.py output folder for the report: its metrics and figures, and the ensemble folders
eval.py writes for several runs (``ensemble.json`` beside the metrics), e.g. storage/demo/ensemble-.../."""
from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import UserError
from core.reporting.freshness import stale_reasons
from core.runs import is_run

MEMBERS_FILE = "ensemble.json"
# eval.py's output folders in a run, keyed by what was evaluated: (folder, label suffix, checkpoint, eval.py flags)
RUN_EVALS = (("eval", "", "best.pt", ()), ("eval-tta", " (TTA)", "best.pt", ("--tta",)),
             ("eval-last", " (last.pt)", "last.pt", ()), ("eval-last-tta", " (last.pt, TTA)", "last.pt", ("--tta",)))


@dataclass(frozen=True)
class Evaluations:
    """A run's evaluations as the report shows them: current metrics, stale ones with the command to refresh."""

    metrics: dict[str, dict[str, Any]]  # "valid", "test (TTA)", "valid (last.pt)", ... -> metrics
    stale: dict[str, str]  # the same labels -> "why (run: command)"
    figures: list[tuple[str, Path]]


def run_evaluations(run: Path) -> Evaluations:
    """Every eval.py output folder of ``run`` (eval/, eval-tta/, eval-last/, eval-last-tta/), each checked
    against the checkpoint it evaluated: best.pt (a CV run: its folds') or last.pt."""
    metrics, stale, figures = {}, {}, []
    for name, suffix, checkpoint, flags in RUN_EVALS:
        folder = run / name
        if not folder.is_dir():
            continue
        found = read_metrics(folder)
        current = None if checkpoint == "best.pt" else [run / checkpoint] if (run / checkpoint).is_file() else []
        reasons = stale_reasons(run, found, current)
        model = run if checkpoint == "best.pt" else run / checkpoint
        for split, m in found.items():
            if split in reasons:
                command = shlex.join(["python", "eval.py", "-m", str(model), "--split", split, *flags])
                stale[split + suffix] = f"{reasons[split]} (run: {command})"
            else:
                metrics[split + suffix] = m
        figures += [(caption + suffix, png) for caption, png in eval_figures(folder, skip=set(reasons))]
    return Evaluations(metrics, stale, figures)


@dataclass(frozen=True)
class EnsembleReport:
    """What the report says about one ensemble folder."""

    path: Path
    members: list[dict[str, Any]]  # ensemble.json's: checkpoint, model, image_size, epoch
    metrics: dict[str, dict[str, Any]]  # split -> metrics, current ones only
    stale: dict[str, str]  # split -> why its evaluation is not of the members' current checkpoints (run: command)
    figures: list[tuple[str, Path]]

    @property
    def checkpoints(self) -> list[Path]:
        return [Path(m["checkpoint"]) for m in self.members]

    def refresh(self, split: str) -> str:
        """The eval.py command that evaluates ``split`` again with the same members."""
        tta = ["--tta"] if self.path.name.endswith("-tta") else []
        return shlex.join(["python", "eval.py", "-m", *map(str, self.checkpoints), "--split", split, *tta,
                           "--output", str(self.path)])

    def describe_members(self) -> str:
        return ", ".join(f"{m.get('model', '?')} ({m['checkpoint']}, epoch {m.get('epoch', '?')})"
                         for m in self.members)


def read_metrics(folder: Path) -> dict[str, dict[str, Any]]:
    """eval.py's <split>_metrics.json files, valid last; UserError naming an unreadable one."""
    found = {}
    for path in sorted(folder.glob("*_metrics.json")):
        try:
            found[path.name.removesuffix("_metrics.json")] = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"{path}: cannot read the metrics ({exc.__class__.__name__}); "
                            f"run eval.py again to rewrite it") from None
    return dict(sorted(found.items(), key=lambda item: item[0] == "valid"))  # labelled test splits are the headline


def eval_figures(folder: Path, skip: set[str] = frozenset()) -> list[tuple[str, Path]]:
    """ROC and reliability figures and Grad-CAM grids of every split, and the confusion matrices of splits
    other than valid (plot.py draws those); none of the splits in ``skip`` (stale evaluations)."""
    valid_first = lambda p: (not p.name.startswith("valid_"), p.name)  # noqa: E731
    cams = [(f"{kind} - {p.name.removesuffix(suffix)}", p)
            for suffix, kind in (("_roc.png", "ROC"), ("_reliability.png", "reliability"), ("_gradcam.png", "Grad-CAM"))
            for p in sorted(folder.glob(f"*{suffix}"), key=valid_first) if p.name.removesuffix(suffix) not in skip]
    others = [(f"confusion matrix - {p.name.removesuffix('_confusion.png')}", p)
              for p in sorted(folder.glob("*_confusion.png"))
              if p.name != "valid_confusion.png" and p.name.removesuffix("_confusion.png") not in skip]
    return cams + others


def find_ensembles(folders: list[Path]) -> list[Path]:
    """Ensemble folders at any depth under ``folders`` (not a CV run's own eval/, which is one run's)."""
    found: list[Path] = []
    for folder in folders:
        for marker in sorted(folder.rglob(MEMBERS_FILE)) if folder.is_dir() else []:
            hidden = any(part.startswith(".") for part in marker.relative_to(folder).parts)
            if not hidden and not is_run(marker.parent.parent) and marker.parent not in found:
                found.append(marker.parent)
    return found


def describe_ensemble(folder: Path) -> EnsembleReport:
    """Members from ensemble.json, metrics and figures as for a run, stale splits set apart."""
    try:
        members = json.loads((folder / MEMBERS_FILE).read_text())["members"]
        checkpoints = [Path(m["checkpoint"]) for m in members]
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{folder / MEMBERS_FILE}: damaged; run the eval.py ensemble command again") from None
    metrics = read_metrics(folder)
    stale = stale_reasons(folder, metrics, checkpoints)
    report = EnsembleReport(folder, members, {k: v for k, v in metrics.items() if k not in stale}, {},
                            eval_figures(folder, skip=set(stale)))
    report.stale.update({split: f"{reason} (run: {report.refresh(split)})" for split, reason in stale.items()})
    return report
