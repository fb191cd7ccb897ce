"""Run folders under storage/: config.json, history.csv, best.pt, last.pt, eval/."""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd

from common.choices import ARCHITECTURES
from common.errors import UserError

FOLD_DIR = re.compile(r"fold_(\d+)")  # a CV run's fold folders: fold_0, fold_1, ...
OOF_FILE, OOF_METRICS = "oof_probs.csv", "oof_metrics.json"  # a CV run's out-of-fold results (core.evaluation.oof)
HISTORY_COLUMNS = ("epoch", "train_loss", "train_acc", "valid_loss", "valid_acc", "lr", "seconds")
# train_loss and valid_loss are plain cross-entropy (comparable); train_objective is the minimised loss
# (label smoothing, class weights), a later column that older runs lack and readers need not know.
WRITTEN_COLUMNS = (*HISTORY_COLUMNS, "train_objective")


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` in one step so that readers never see half a file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, default_mode())
    os.replace(tmp, path)


@contextmanager
def staged_folder(target: Path) -> Iterator[Path]:
    """A new temporary folder beside ``target`` to write outputs into; when the block ends without an error
    its files replace those of the same names in ``target``, else they are deleted and ``target`` keeps its
    earlier outputs (a failed or interrupted run never leaves half of them overwritten)."""
    target.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        yield stage
        for path in sorted(p for p in stage.rglob("*") if p.is_file()):
            final = target / path.relative_to(stage)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, final)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def default_mode() -> int:
    """The mode a plain open() would give a new file (mkstemp's temporary files are 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def write_history(run_dir: Path, rows: list[dict[str, float]]) -> None:
    """history.csv with one row per finished epoch."""
    write_text_atomic(run_dir / "history.csv", pd.DataFrame(rows, columns=WRITTEN_COLUMNS).to_csv(index=False))


def fold_dirs(cv_dir: Path) -> list[Path]:
    """cv_dir/fold_0, fold_1, ... in numeric order (fold_10 after fold_9)."""
    found = [d for d in cv_dir.iterdir() if d.is_dir() and FOLD_DIR.fullmatch(d.name)] if cv_dir.is_dir() else []
    return sorted(found, key=lambda d: int(FOLD_DIR.fullmatch(d.name)[1]))


def cv_history(cv_dir: Path) -> pd.DataFrame:
    """Per epoch, the mean over folds of every history column, plus valid_acc_min/max and valid_loss_min/max."""
    frames = [read_history(d) for d in fold_dirs(cv_dir) if (d / "history.csv").is_file()]
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=list(HISTORY_COLUMNS))
    every = pd.concat(frames, ignore_index=True)
    grouped = every.groupby("epoch", sort=True)
    mean = grouped.mean().reset_index()
    for col in ("valid_acc", "valid_loss", "train_acc", "train_loss"):
        mean[f"{col}_min"] = grouped[col].min().to_numpy()
        mean[f"{col}_max"] = grouped[col].max().to_numpy()
    mean["folds"] = grouped.size().to_numpy()
    return mean


def read_history(run_dir: Path) -> pd.DataFrame:
    """A run's history.csv (a CV run: the mean over its folds, cv_history); UserError if malformed."""
    if is_cv_run(run_dir):
        return cv_history(run_dir)
    path = run_dir / "history.csv"
    try:
        df = pd.read_csv(path)
    except (FileNotFoundError, pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
        raise UserError(f"{path}: cannot read the run history ({exc.__class__.__name__})") from None
    missing = [c for c in HISTORY_COLUMNS if c not in df.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}; is this a run folder of train.py?")
    numbers = df[list(HISTORY_COLUMNS)].apply(pd.to_numeric, errors="coerce")
    bad = numbers.isna().any(axis=1)
    if bad.any():
        row = int(bad.to_numpy().argmax())
        raise UserError(f"{path} line {row + 2}: a value that is not a number; the file is damaged")
    return numbers


def read_config(run_dir: Path) -> dict[str, Any]:
    """A run's config.json ({} if absent)."""
    path = run_dir / "config.json"
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON (line {exc.lineno})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read it ({exc.__class__.__name__})") from None
    if not isinstance(config, dict):
        raise UserError(f"{path}: holds a JSON {type(config).__name__}, not the settings of a run")
    return config


def read_saved(path: Path, field: str, valid: Callable[[float], bool], redo: str) -> dict[str, Any] | None:
    """A small JSON that eval.py saved (operating point, temperature) or None if absent.

    UserError if it cannot be read or its number ``field`` fails ``valid``; ``redo`` says how to make it again.
    """
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
        if not valid(float(saved[field])):
            raise ValueError(f"{field} out of range")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: cannot read the saved {field} ({exc.__class__.__name__}); delete it or "
                        f"{redo}") from None
    return saved


def read_confusion(path: Path) -> tuple[np.ndarray, list[str]]:
    """A confusion matrix CSV written by eval.py: (counts, class names); UserError if malformed."""
    try:
        frame = pd.read_csv(path, index_col=0)
        counts = frame.to_numpy()
        ok = counts.ndim == 2 and counts.shape[0] == counts.shape[1] > 0 and np.issubdtype(counts.dtype, np.integer) \
            and (counts >= 0).all()
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError):
        ok = False
    if not ok:
        raise UserError(f"{path}: not a confusion matrix written by eval.py; run eval.py again to rewrite it")
    return counts, [str(c).removeprefix("pred ") for c in frame.columns]


def is_run(folder: Path) -> bool:
    return (folder / "history.csv").is_file() or is_cv_run(folder)


def is_cv_run(folder: Path) -> bool:
    """A k-fold cross-validation run (train.py --folds K): cv.json beside fold_0/, fold_1/, ..."""
    return (folder / "cv.json").is_file()


def runs_under(root: Path) -> list[Path]:
    """Run folders at any depth under ``root`` (``root`` itself if it is one).

    Links (``latest``), hidden folders and the image cache are skipped, so no run is listed twice.
    """
    if is_run(root):
        return [root]
    found: list[Path] = []
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        if d.is_dir() and not d.is_symlink() and not d.name.startswith(".") and d.name != "cache":
            found += runs_under(d)
    return found


def last_written(run: Path) -> float:
    """When a run last saved anything train.py writes (not eval.py's outputs); a CV run: its newest fold."""
    if is_cv_run(run):
        return max((last_written(fold) for fold in run.glob("fold_*") if fold.is_dir()), default=0.0)
    files = [run / n for n in ("last.pt", "best.pt", "history.csv")]
    return max((f.stat().st_mtime for f in files if f.is_file()), default=0.0)


def newest_run(root: Path) -> Path:
    """The run under ``root`` (any depth) that train.py wrote last; UserError naming ``root`` if none."""
    runs = runs_under(root)
    if not runs:
        where = f"{root} (searched at any depth)" if root.is_dir() else f"{root} (no such folder)"
        raise UserError(f"no training run found under {where}; train one with train.py or give a run folder")
    return max(runs, key=last_written)


RUN_FILES = ("history.csv", "config.json", "best.pt", "last.pt", "cv.json")  # any of them: a run folder


def pick_run(path: str | Path, storage: Path = Path("storage")) -> Path:
    """``latest``, ``<folder>/latest`` or a folder holding runs -> the newest run under it (said on stdout).

    Any other path (a run folder, a checkpoint, a missing file) comes back as it is.
    """
    p = Path(path)
    if p.name == "latest" and not p.is_file():
        root = storage if str(path) == "latest" else p.parent
    elif p.is_dir() and not any((p / name).is_file() for name in RUN_FILES):
        root = p
    else:
        return p
    run = newest_run(root)
    print(f"{path}: using {run} (the newest run under {root})")
    return run


def find_runs(paths: list[Path]) -> list[Path]:
    """Run folders among ``paths``: each a run folder or a folder holding runs at any depth."""
    runs: list[Path] = []
    for p in paths:
        if not p.is_dir():
            raise UserError(f"{p}: no such folder; give run folders or a folder that holds them (e.g. storage/)")
        found = runs_under(p)
        if not found:
            raise UserError(f"{p}: holds no training run at any depth (a run folder has history.csv); "
                            f"train one with train.py")
        runs += [r for r in found if r.resolve() not in {x.resolve() for x in runs}]
    return sorted(runs, key=_depth_then_name)


def _depth_then_name(run: Path) -> tuple[int, str]:
    """ResNet18 before ResNet50 before ResNet152, whatever the folder names."""
    arch = read_config(run).get("arch", "")
    order = list(ARCHITECTURES)
    return (order.index(arch) if arch in order else len(order), run.name)


def output_folder(output: str | None, folders: list[str], runs: list[Path]) -> Path:
    """--output, else the folder of runs that was given (or the parent of a run given directly); created."""
    first = Path(folders[0])
    out = Path(output) if output else first if first not in runs else runs[0].parent
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the output folder {out} ({exc.strerror or exc}); choose another --output") \
            from None
    return out


def link_latest(out: Path, run_dir: Path) -> None:
    """Point ``out/latest`` at the newest run (a relative symlink, replaced atomically); a fold: its CV run."""
    if is_cv_run(run_dir.parent) and run_dir.parent.resolve() != out.resolve():
        run_dir = run_dir.parent
    link = out / "latest"
    tmp = out / f".latest.{os.getpid()}"
    try:
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(os.path.relpath(run_dir.resolve(), out.resolve()), target_is_directory=True)
        os.replace(tmp, link)
    except OSError:
        tmp.unlink(missing_ok=True)  # no symlinks here (some Windows setups): fall back to a text file
        write_text_atomic(out / "LATEST", os.path.relpath(run_dir.resolve(), out.resolve()) + "\n")
