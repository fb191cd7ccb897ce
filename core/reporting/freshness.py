"""Whether an evaluation still belongs to the run's current best.pt.

eval.py records in every ``<split>_metrics.json`` what it evaluated (``"evaluated": {"checkpoints":
[{"path", "epoch", "digest"}], "tta", "temperature", "split"}``). A run resumed to a new best
epoch rewrites best.pt, and its old evaluation then describes weights that are gone: the report
and plot.py show such an evaluation as stale, with the command that refreshes it, not as a result.
"""
from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from core.checkpoint import checkpoint_digest
from core.runs import is_cv_run, read_history

NO_RECORD = "evaluated before eval.py recorded which checkpoint it evaluated"


def current_checkpoints(run: Path) -> list[Path]:
    """What the evaluation in ``run/eval/`` should be of: best.pt, or each fold's best.pt of a CV run."""
    if (run / "best.pt").is_file():
        return [run / "best.pt"]
    return sorted(run.glob("fold_*/best.pt")) if is_cv_run(run) else []


def stale_reasons(run: Path, metrics: dict[str, dict[str, Any]], current: list[Path] | None = None) -> dict[str, str]:
    """Split -> why its metrics do not belong to the current checkpoints (default: the run's, see
    current_checkpoints; an ensemble: its members'), for the stale splits only.

    A run with no best.pt (nothing to compare with) has none stale.
    """
    current = current_checkpoints(run) if current is None else current
    if not current:
        return {}
    gone = [str(path) for path in current if not path.is_file()]
    if gone:
        return {split: f"{', '.join(gone)} no longer exist{'s' if len(gone) == 1 else ''}" for split in metrics}
    digests = {path: checkpoint_digest(path) for path in current}
    history = read_history(run) if (run / "history.csv").is_file() else None
    now = int(history["epoch"][history["valid_acc"].idxmax()]) if history is not None and len(history) else None
    reasons = {split: stale_reason(m, digests, now) for split, m in metrics.items()}
    return {split: reason for split, reason in reasons.items() if reason}


def stale_reason(metrics: dict[str, Any], digests: dict[Path, str], best_epoch: int | None = None) -> str:
    """'' if ``metrics`` record exactly the checkpoints ``digests`` (path -> current digest); else why not
    (``best_epoch``: the epoch best.pt now holds, for the message)."""
    evaluated = metrics.get("evaluated")
    recorded = evaluated.get("checkpoints") if isinstance(evaluated, dict) else None
    if not isinstance(recorded, list):
        return NO_RECORD
    entries = [c for c in recorded if isinstance(c, dict)]
    seen = {c.get("digest") for c in entries}
    if seen == set(digests.values()):
        return ""
    epochs = sorted({c["epoch"] for c in entries if isinstance(c.get("epoch"), int)})
    what = f"epoch {', '.join(map(str, epochs))}" if epochs else "other weights"
    name = (lambda p: f"{p.parent.name}/{p.name}") if len(digests) > 1 else (lambda p: p.name)  # noqa: E731
    changed = [name(path) for path, digest in digests.items() if digest not in seen] or ["the checkpoints"]
    only_best = len(digests) == 1 and next(iter(digests)).name == "best.pt"
    now = f" (best.pt is now epoch {best_epoch})" if best_epoch is not None and only_best else ""
    return f"evaluated the weights of {what}; {', '.join(changed)} changed since{now}"


def refresh_command(run: Path, split: str) -> str:
    """The eval.py command that evaluates ``split`` of ``run`` again, from its current best.pt."""
    return shlex.join(["python", "eval.py", "-m", str(run), "--split", split])
