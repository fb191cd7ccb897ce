"""Models to evaluate: one checkpoint or an ensemble, each with its own preprocessing; averaged probabilities.

``ensemble_probs(checkpoints, splits, options)`` is the whole story for callers that only want
numbers (k-fold ensembles reuse it); ``eval.py`` keeps the loaded members for Grad-CAM.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

import data
from core import engine
from core.checkpoint import (CheckpointError, load_checkpoint, model_from_checkpoint, preprocess_from_checkpoint,
                             resolve_checkpoint)
from core.engine import Runtime
from core.tta import combined_name as combined_tta
from core.tta import tta_for
from models import display_name


@dataclass(frozen=True)
class Member:
    """One model of an ensemble, ready to predict: its weights on the device and its own preprocessing."""

    path: Path  # the checkpoint file
    model: torch.nn.Module
    prep: data.Preprocess
    arch: str
    classes: tuple[str, ...]
    config: dict[str, Any]
    epoch: Any

    @property
    def run_name(self) -> str:
        """The run folder's name (a checkpoint outside a run folder: its file name without .pt)."""
        folder = self.path.parent
        return folder.name if (folder / "config.json").is_file() or (folder / "history.csv").is_file() \
            else self.path.stem


@dataclass(frozen=True)
class SplitPredictOptions:
    """How to predict: batch size, loader processes, TTA asked for (each member's policy decides which
    views; core.tta), the decode-once cache folder."""

    batch_size: int = 64
    workers: int = 0
    tta: bool = False
    cache_dir: Path | None = None
    show_progress: bool = True


def load_member(spec: str | Path, rt: Runtime) -> Member:
    """A checkpoint, run folder or 'latest', rebuilt with no flags and moved to ``rt.device``."""
    path = resolve_checkpoint(spec, prefer="best.pt")
    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt, path)
    model = model.to(rt.device, memory_format=torch.channels_last if rt.channels_last else torch.preserve_format)
    classes = tuple(map(str, ckpt.get("classes") or range(ckpt["num_classes"])))
    return Member(path, model, preprocess_from_checkpoint(ckpt, path), ckpt["arch"], classes,
                  ckpt.get("config", {}), ckpt.get("epoch", "?"))


def load_members(specs: Sequence[str | Path], rt: Runtime) -> list[Member]:
    """Every checkpoint of an ensemble; CheckpointError unless they all predict the same classes."""
    members = [load_member(spec, rt) for spec in specs]
    for m in members[1:]:
        if m.classes != members[0].classes:
            raise CheckpointError(f"{m.path} predicts {', '.join(m.classes)} but {members[0].path} predicts "
                                  f"{', '.join(members[0].classes)}; an ensemble needs the same classes")
    return members


def ensemble_name(members: Sequence[Member]) -> str:
    """A single model's run name, or 'ensemble-<run1>+<run2>+...' (a member's last.pt: '<run>-last')."""
    if len(members) == 1:
        return members[0].run_name
    return "ensemble-" + "+".join(m.run_name + ("" if checkpoint_key(m) == "best" else f"-{checkpoint_key(m)}")
                                  for m in members)


def checkpoint_key(member: Member) -> str:
    """'best' for best.pt (and any checkpoint outside a run folder but last.pt), else the file's stem ('last')."""
    stem = member.path.stem
    in_run = member.run_name == member.path.parent.name
    return stem if stem == "last" or (in_run and stem != "best") else "best"


def member_tta(member: Member, asked: bool) -> str | None:
    """The TTA this member uses when TTA is asked for: what its augmentation policy allows (core.tta)."""
    return tta_for(member.config) if asked else None


def ensemble_tta(members: Sequence[Member], asked: bool) -> str | None:
    """What the metrics record as the TTA used: None when off, else e.g. 'flips+rot90' or 'none'."""
    return combined_tta([member_tta(m, asked) for m in members])


def member_loader(member: Member, split: data.Split, options: SplitPredictOptions, rt: Runtime) -> data.BatchLoader:
    """Batches of ``split`` preprocessed as ``member`` was trained (its image size, crop and mean/std)."""
    dataset = data.ImageDataset(split, member.prep, options.cache_dir)
    return data.make_loader(dataset, options.batch_size, workers=options.workers, pin_memory=rt.device.type == "cuda")


def predict_split(members: Sequence[Member], split: data.Split, options: SplitPredictOptions,
                  rt: Runtime) -> tuple[np.ndarray, np.ndarray]:
    """The mean of the members' softmax probabilities (N x C) on ``split``, and its labels."""
    total, labels = None, None
    for member in members:
        transform = data.BatchTransform(member.prep, train=False).to(rt.device)
        probs, labels = engine.predict(member.model, member_loader(member, split, options, rt), transform, rt,
                                       member_tta(member, options.tta), options.show_progress)
        total = probs.astype(np.float64) if total is None else total + probs
    return (total / len(members)).astype(np.float32), labels


def member_records(members: Sequence[Member]) -> list[dict[str, Any]]:
    """What ensemble.json records about each member."""
    return [{"checkpoint": str(m.path), "model": display_name(m.arch), "image_size": m.prep.image_size,
             "epoch": m.epoch} for m in members]


def default_output(members: Sequence[Member], tta: bool = False) -> Path:
    """Where an evaluation of ``members`` goes, keyed by what is evaluated so that none overwrites another:
    a single run's ``eval/`` (best.pt), ``eval-last/`` (last.pt), with ``-tta`` appended under TTA; an
    ensemble's own folder beside the first run (under storage/), ``-tta`` likewise."""
    first = members[0]
    suffix = "-tta" if tta else ""
    if len(members) == 1:
        key = checkpoint_key(first)
        return first.path.parent / ("eval" + ("" if key == "best" else f"-{key}") + suffix)
    in_run = first.run_name == first.path.parent.name
    return (first.path.parent.parent if in_run else first.path.parent) / (ensemble_name(members) + suffix)
