"""k-fold cross-validation: one training run per fold under <run>/fold_<k>/, resumable fold by fold.

    <run>/cv.json          the settings, K and how the folds were made (marks the folder as a CV run)
    <run>/config.json      as for a plain run, so plots and reports read it alike
    <run>/folds.csv        path,id,label,patient,fold: the assignment a resume and eval.py reuse exactly
    <run>/fold_<k>/        a plain run folder (config, history, best.pt, last.pt) + finished.json when done
    <run>/cv_summary.csv   each fold's best and last valid metrics, their mean and std (and .json)
    <run>/oof_probs.csv    out-of-fold predictions, every pooled image once, and oof_metrics.json: the headline

A killed CV run resumes with the unfinished fold (from its last.pt); finished folds are not retrained.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch

import data
from common.errors import UserError
from core import distributed
from core.checkpoint import CheckpointError, load_checkpoint
from core.evaluation.oof import write_oof
from core.runs import FOLD_DIR
from core.runs import is_cv_run, link_latest, pick_run, read_config, write_json, write_text_atomic
from core.training.config import TrainConfig, check_config
from core.training.cvsummary import format_table, write_summary
from core.training.trainer import Resume, fit, new_run_dir
from data.folds import assign_folds, describe_folds, fold_source, pooled, read_folds
from data.patients import find_patients
from models import display_name

CV_FILE = "cv.json"
FOLDS_FILE = "folds.csv"
FINISHED_FILE = "finished.json"


def cv_folder(path: str | Path, storage: Path = Path("storage"), folds_too: bool = False) -> Path | None:
    """The CV run that ``path`` (or 'latest') names; with ``folds_too`` also from a fold folder or checkpoint."""
    p = pick_run(path, storage)
    for candidate in [p, *([p.parent, p.parent.parent] if folds_too else [])]:
        if candidate.is_dir() and is_cv_run(candidate):
            real = candidate.resolve()  # by its real name: storage/latest is only a link
            return real.relative_to(Path.cwd()) if real.is_relative_to(Path.cwd()) else real
    return None


def resumed_config(cv_dir: Path, changes: dict[str, Any]) -> TrainConfig:
    """The CV run's own settings (its config.json), with ``changes`` (the flags given to resume) applied."""
    saved = read_config(cv_dir)
    names = {f.name for f in fields(TrainConfig)}
    if not isinstance(saved.get("folds"), int) or saved["folds"] < 2:
        raise UserError(f"{cv_dir / 'config.json'}: no valid 'folds' setting; the file is damaged")
    try:
        cfg = TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k in names})
        cfg = replace(cfg, **changes)
        check_config(cfg)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{cv_dir / 'config.json'}: invalid settings ({exc}); the file is damaged") from None
    return cfg


def run_cv(arch: str, cfg: TrainConfig, source: data.DataSource, device: torch.device, dist: distributed.Dist,
           cv_dir: Path | None) -> Path:
    """Train cfg.folds fold runs of ``arch`` (continuing ``cv_dir`` if given); write and print the summary."""
    cv_dir = cv_dir or new_cv_dir(cfg, arch, dist)
    table = fold_table(cv_dir, source, cfg, dist)
    if dist.is_main:
        cv_info = {"folds": cfg.folds, "arch": arch, "model": display_name(arch), "seed": cfg.seed,
                   "split": cfg.split, "assignment": FOLDS_FILE, "how": describe_folds(table)}
        write_json(cv_dir / CV_FILE, cv_info)
        command = read_config(cv_dir).get("command") or (  # a resume keeps the command that started the run
            " ".join(["python", *sys.argv]) if sys.argv and sys.argv[0].endswith(".py") else None)
        write_json(cv_dir / "config.json", {"arch": arch, "model": f"{display_name(arch)} {cfg.folds}-fold CV",
                                            **asdict(replace(cfg, models=(arch,))), "command": command})
        link_latest(Path(cfg.out), cv_dir)
        print(f"{cfg.folds}-fold cross-validation of {display_name(arch)} in {cv_dir}: {cv_info['how']}")
        if (warning := find_patients(table["path"]).warning) is not None:
            print(f"warning: {warning}")
    for fold in range(cfg.folds):
        run_fold(arch, cfg, fold_source(source, table, fold), cv_dir / f"fold_{fold}", (device, dist))
    if dist.is_main:
        summary = write_summary(cv_dir, cfg.folds)
        print(f"\n{display_name(arch)} {cfg.folds}-fold cross-validation (each fold's best valid epoch, chosen on "
              f"that fold, and its last):\n{format_table(summary)}\n  -> {cv_dir / 'cv_summary.csv'}")
        write_oof(cv_dir, source, table, device, Path(cfg.out) / "cache" if cfg.cache else None)
        print(f"  ensemble the folds on the test lists: python eval.py -m {cv_dir}")
    return cv_dir


def run_fold(arch: str, cfg: TrainConfig, source: data.DataSource, fold_dir: Path,
             where: tuple[torch.device, distributed.Dist]) -> None:
    """Train one fold, continuing its last.pt if there is one; a finished fold is skipped."""
    device, dist = where
    if finished(fold_dir, cfg.epochs):
        if dist.is_main:
            print(f"{fold_dir.name}: finished earlier ({cfg.epochs} epochs); not retrained")
        return
    last = fold_dir / "last.pt"
    resume = Resume(load_checkpoint(last), fold_dir) if last.is_file() else None
    if resume is None and dist.is_main:
        # killed between writing history.csv and the first last.pt: nothing to continue, start the fold over
        (fold_dir / "history.csv").unlink(missing_ok=True)
    distributed.barrier(dist)
    if dist.is_main:
        print(f"\n{fold_dir.name}: {source.note}" + (f"; resuming at epoch {resume.ckpt.get('epoch')}"
                                                      if resume else ""))
    fold_cfg = replace(cfg, models=(arch,), name=os.path.relpath(fold_dir, cfg.out))
    fit(arch, fold_cfg, source, device, dist, resume)
    if dist.is_main:
        write_json(fold_dir / FINISHED_FILE, {"epochs": cfg.epochs, "finished": time.strftime("%Y-%m-%d %H:%M:%S")})


def finished(fold_dir: Path, epochs: int) -> bool:
    """True when the fold ran to ``epochs`` (finished.json written after its last epoch)."""
    try:
        saved = json.loads((fold_dir / FINISHED_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False  # absent or damaged: continue the fold from its last.pt rather than trust it
    return isinstance(saved, dict) and isinstance(saved.get("epochs"), int) and saved["epochs"] >= epochs


def new_cv_dir(cfg: TrainConfig, arch: str, dist: distributed.Dist) -> Path:
    """storage/<name>/ for a new CV run: --name, else <Model>-cv<K>-<date>-<time>; never an existing run."""
    model = display_name(arch)
    if cfg.name:
        name = f"{cfg.name}-{model}" if len(cfg.models) > 1 else cfg.name
    else:
        name = f"{model}{'-pretrained' if cfg.pretrained else ''}-cv{cfg.folds}-{time.strftime('%Y%m%d-%H%M%S')}"
    if is_cv_run(Path(cfg.out) / name):
        raise UserError(f"{Path(cfg.out) / name} already holds a CV run; continue it with "
                        f"--resume {Path(cfg.out) / name} or choose another --name")
    return new_run_dir(replace(cfg, name=name, models=(arch,)), arch, dist)


def fold_table(cv_dir: Path, source: data.DataSource, cfg: TrainConfig, dist: distributed.Dist) -> pd.DataFrame:
    """folds.csv if the run has one (a resume: the very same folds), else a new assignment written there."""
    path = cv_dir / FOLDS_FILE
    if path.is_file():
        table = read_folds(path)
        check_same_images(table, source, path)
        if table["fold"].max() + 1 != cfg.folds:
            raise UserError(f"{path} holds {table['fold'].max() + 1} folds but --folds {cfg.folds} was given; "
                            f"drop --folds to resume")
        return table
    table = assign_folds(source, cfg.folds, cfg.seed, cfg.split)
    if dist.is_main:
        write_text_atomic(path, table.to_csv(index=False))
    return table


# ------------------------------------------------------------------------------ evaluation


def fold_checkpoints(cv_dir: Path) -> list[Path]:
    """Each fold's best.pt, fold_0 first; CheckpointError if a fold has none yet."""
    try:
        k = int(json.loads((cv_dir / CV_FILE).read_text())["folds"])
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{cv_dir / CV_FILE}: damaged; it must hold the number of folds") from None
    missing = [f"fold_{i}" for i in range(k) if not (cv_dir / f"fold_{i}" / "best.pt").is_file()]
    if missing:
        raise CheckpointError(f"{cv_dir}: {', '.join(missing)} {'has' if len(missing) == 1 else 'have'} no best.pt "
                              f"yet; finish the CV run with: python train.py --resume {cv_dir}")
    return [cv_dir / f"fold_{i}" / "best.pt" for i in range(k)]


def fold_view(checkpoint: Path, source: data.DataSource) -> data.DataSource:
    """For a fold model (<cv run>/fold_<k>/*.pt): ``source`` with that fold's valid and train; else unchanged."""
    fold_dir, cv_dir = checkpoint.parent, checkpoint.parent.parent
    match = FOLD_DIR.fullmatch(fold_dir.name)
    if not match or not is_cv_run(cv_dir):
        return source
    table = read_folds(cv_dir / FOLDS_FILE)
    check_same_images(table, source, cv_dir / FOLDS_FILE)
    return fold_source(source, table, int(match[1]))


def check_same_images(table: pd.DataFrame, source: data.DataSource, path: Path) -> None:
    """UserError if the pooled train+valid images are not those of the fold assignment."""
    now = set(pooled(source)["path"])
    if set(table["path"]) != now:
        raise UserError(f"{path}: the data changed since this CV run started ({len(now)} images now, "
                        f"{len(table)} in its folds); start a new run")
