"""Out-of-fold predictions of a cross-validation run: every pooled image scored once, by the fold model
that did not train on it, and their metrics with 95% intervals (the CV run's headline).

    <run>/oof_probs.csv      path,id,label,patient,fold,prob_<class>...,pred: one row per train+valid image
    <run>/oof_metrics.json   metrics of those predictions with bootstrap intervals (patients where known)

Each fold is scored by its last.pt, the final epoch of a length fixed in advance (its EMA weights with
--ema): nothing was chosen on the images it scores. A fold's best epoch was picked on that very fold,
so the per-fold best scores in cv_summary.csv are optimistic; they stay there beside the last epoch's.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import torch

import data
from core.checkpoint import load_checkpoint, model_from_checkpoint, preprocess_from_checkpoint
from core.engine import Runtime
from core.evaluation.ensemble import Member, SplitPredictOptions, predict_split
from core.evaluation.evaluate import EvalSettings, scored, summary_line
from core.hardware import make_runtime
from core.runs import OOF_FILE, OOF_METRICS, write_json, write_text_atomic
from data.folds import fold_source


def final_member(path: Path, rt: Runtime) -> Member:
    """A fold's last.pt ready to predict: the weights it validated (the EMA's where the run kept one)."""
    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt, path)
    classes = tuple(map(str, ckpt.get("classes") or range(ckpt["num_classes"])))
    return Member(path, model.to(rt.device), preprocess_from_checkpoint(ckpt, path), ckpt["arch"], classes,
                  ckpt.get("config", {}), ckpt.get("epoch", "?"))


def out_of_fold(cv_dir: Path, source: data.DataSource, table: pd.DataFrame, device: torch.device,
                cache_dir: Path | None) -> pd.DataFrame:
    """The folds.csv rows with each image's probabilities from the fold model that did not train on it."""
    rt = make_runtime(device, amp=None, channels_last=None)
    options = SplitPredictOptions(cache_dir=cache_dir, show_progress=False)
    parts = []
    for fold in range(int(table["fold"].max()) + 1):
        member = final_member(cv_dir / f"fold_{fold}" / "last.pt", rt)
        valid = fold_source(source, table, fold).splits["valid"]  # the fold's rows, in folds.csv order
        probs, _ = predict_split([member], valid, options, rt)
        columns = {f"prob_{c}": probs[:, i] for i, c in enumerate(source.classes)}
        parts.append(table[table["fold"] == fold].assign(**columns, pred=probs.argmax(axis=1)))
    return pd.concat(parts).loc[table.index]


def write_oof(cv_dir: Path, source: data.DataSource, table: pd.DataFrame, device: torch.device,
              cache_dir: Path | None, resamples: int = 2000) -> dict[str, Any]:
    """oof_probs.csv and oof_metrics.json; returns the metrics and prints them as the CV headline."""
    oof = out_of_fold(cv_dir, source, table, device, cache_dir)
    write_text_atomic(cv_dir / OOF_FILE, oof.to_csv(index=False))
    labels = oof["label"].to_numpy()
    probs = oof[[f"prob_{c}" for c in source.classes]].to_numpy()
    patients = oof["patient"].astype(str).to_numpy() if (oof["patient"] != "").all() else None
    settings = EvalSettings(cv_dir, tuple(source.classes), cv_dir.name, cv_dir.name, resamples=resamples)
    m = scored(labels, probs, probs.argmax(axis=1), settings, patients)
    m["scored_by"] = "each fold's last.pt (final epoch) on the images it did not train on"
    write_json(cv_dir / OOF_METRICS, m)
    print(f"out-of-fold ({len(oof)} images, each scored once by the fold model that did not train on it; "
          f"95% intervals over {m['bootstrap']['unit']}):\n  {summary_line(m)}\n  -> {cv_dir / OOF_FILE}")
    return m

