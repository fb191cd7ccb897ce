"""Continuing a run: restoring its state (per rank, on other hardware), its learning-rate schedule
when it is trained longer, torchrun's elastic restarts, and the record of its sessions.

What ``restore`` does with the parts of last.pt that may not fit the process reading it:

- ``ranks``: one RNG state and partial-epoch sums per rank (DDP), and with --ema that rank's EMA
  BatchNorm statistics. The same number of ranks gets its own back; another number gets rank 0's
  RNG and EMA statistics and all the sums counted once, on rank 0.
- ``scaler``: the fp16 loss scale. A run saved on the CPU or in bf16/fp32 has none; resumed where
  AMP uses fp16 the scaler starts fresh (it finds its scale again within a few steps).
- ``lr_segments``: the learning-rate schedule as pieces, one per time the run was trained longer
  (see ``extend_schedule``).
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from core import distributed, engine
from core.checkpoint import CheckpointError, load_checkpoint, set_rng_state
from core.runs import is_cv_run, read_config
from core.training.config import TrainConfig
from core.training.ema import ModelEMA

COUNTERS = ("epoch", "step", "history", "best_acc", "best_epoch")  # the loop's state, saved in every checkpoint
# Training longer than a finished schedule (-e N on --resume): a new cosine over the extra epochs from
# EXTEND_PEAK x the original peak, after EXTEND_WARMUP epochs of linear warm-up. Measured on the demo
# (README, "Training longer"): rebuilding the schedule for N epochs, or a new one at 0.3 x the peak, lost
# 3-36 and ~10 points of valid accuracy in the first extended epoch; this one lost 0.5-0.8.
EXTEND_PEAK = 0.1
EXTEND_WARMUP = 1.0


@dataclass(frozen=True)
class Resume:
    """A training state to continue: the loaded checkpoint and the run folder it belongs to."""

    ckpt: dict[str, Any]
    run_dir: Path


@dataclass
class Counters:
    """Where the loop is; saved in every checkpoint (``sums``: the unfinished epoch's running sums)."""

    epoch: int = 0
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best_acc: float = -1.0
    best_epoch: int = 0
    sums: dict[str, Any] | None = None


def restore(resume: Resume, models: tuple[torch.nn.Module, ModelEMA | None], optimizer: torch.optim.Optimizer,
            scaler: torch.amp.GradScaler, device: torch.device, dist: distributed.Dist) -> Counters:
    """Load a training state into model (and its EMA), optimizer, scaler and this rank's RNGs; returns the counters."""
    ckpt = resume.ckpt
    raw, ema = models
    try:
        rng, sums, ema_buffers = rank_state(ckpt, dist)
        raw.load_state_dict(ckpt["model"])
        if ema:
            ema.load_state_dict(ckpt["ema"])
            if ema_buffers:
                ema.load_rank_buffers(ema_buffers)
        optimizer.load_state_dict(ckpt["optimizer"])
        if not load_scaler(scaler, ckpt["scaler"]) and dist.is_main:
            print(f"{resume.run_dir / 'last.pt'} holds no fp16 loss scale (saved on another device or precision); "
                  "the GradScaler starts fresh")
        if sums is not None:
            engine.EpochSums.from_state(sums, device, ckpt["step"])  # fail now, not mid-epoch
        set_rng_state(rng)
        return Counters(**{k: ckpt[k] for k in COUNTERS}, sums=sums)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as exc:
        raise CheckpointError(f"{resume.run_dir}: its training state cannot be restored "
                              f"({str(exc).splitlines()[0][:160]}); the file is damaged") from None


def load_scaler(scaler: torch.amp.GradScaler, state: dict[str, Any]) -> bool:
    """Load the fp16 loss-scale state; False when the scaler is needed but ``state`` has none to give."""
    if not scaler.is_enabled():
        return True  # bf16, fp32 or CPU: no loss scale to restore, whatever was saved
    if not {"scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker"} <= set(state):
        return False
    scaler.load_state_dict(state)
    return True


def rank_state(ckpt: dict[str, Any], dist: distributed.Dist
               ) -> tuple[dict[str, Any], dict[str, Any] | None, dict[str, torch.Tensor] | None]:
    """This rank's RNG state, partial-epoch sums and (with --ema under DDP) EMA BatchNorm statistics from a
    checkpoint (see the module docstring). No EMA statistics: every rank keeps rank 0's, saved in ``ema``
    (another number of ranks, or a last.pt from before they were kept)."""
    ranks = ckpt.get("ranks") or [{"rng": ckpt["rng"], "sums": ckpt["sums"]}]
    if len(ranks) == dist.world_size:
        own = ranks[dist.rank]
        return own["rng"], own["sums"], own.get("ema_buffers")
    partial = [r["sums"] for r in ranks if r["sums"] is not None]
    if not partial:
        return ranks[0]["rng"], None, None
    total = {**partial[0], **{k: sum(p[k] for p in partial) for k in engine.EpochSums.COUNTED if k in partial[0]}}
    mine = total if dist.is_main else {**total, **{k: torch.zeros_like(total[k]) for k in engine.EpochSums.COUNTED
                                                   if k in total}}
    return ranks[0]["rng"], {**mine, "bad_step": torch.tensor(-1)}, None


# ------------------------------------------------------------------------- learning-rate schedule


def lr_segments(ckpt: dict[str, Any] | None, cfg: TrainConfig, done_epochs: int) -> tuple[list[dict], str | None]:
    """The schedule's pieces ({"start_epoch", "peak_scale", "warmup_epochs"}) and a line saying what changed.

    A fresh run has one piece. A resumed run keeps its pieces; the last one ends at ``cfg.epochs``.
    Resumed at the end of its schedule with more epochs, it gets a new piece (``extend_schedule``).
    """
    if ckpt is None:
        return [{"start_epoch": 0, "peak_scale": 1.0, "warmup_epochs": cfg.warmup_epochs}], None
    segments = [dict(s) for s in ckpt.get("lr_segments") or
                [{"start_epoch": 0, "peak_scale": 1.0, "warmup_epochs": ckpt["config"].get("warmup_epochs", 1.0)}]]
    planned = int(ckpt["config"].get("epochs", cfg.epochs))
    if cfg.epochs <= planned or cfg.scheduler == "none":
        return segments, None
    if done_epochs < planned or ckpt.get("step"):
        return segments, (f"-e {cfg.epochs}: the {cfg.scheduler} schedule, {done_epochs} of {planned} epochs done, "
                          f"is stretched to {cfg.epochs} epochs")
    return extend_schedule(segments, cfg, done_epochs)


def extend_schedule(segments: list[dict], cfg: TrainConfig, done_epochs: int) -> tuple[list[dict], str]:
    """Append the piece that trains a finished run longer (EXTEND_PEAK, EXTEND_WARMUP)."""
    segments = [*segments, {"start_epoch": done_epochs, "peak_scale": EXTEND_PEAK, "warmup_epochs": EXTEND_WARMUP}]
    peak = cfg.learning_rate * EXTEND_PEAK
    return segments, (f"-e {cfg.epochs}: the {done_epochs}-epoch schedule had finished; epochs {done_epochs + 1}-"
                      f"{cfg.epochs} get a new {cfg.scheduler} schedule peaking at {peak:.2e} ({EXTEND_PEAK:g} x "
                      f"the original peak) after a {EXTEND_WARMUP:g}-epoch warm-up")


def segmented_schedule(segments: list[dict], cfg: TrainConfig, steps: int) -> Callable[[int], float]:
    """Global step -> learning rate: each piece is ``engine.lr_schedule`` from its own start."""
    starts = [s["start_epoch"] for s in segments]
    ends = [*starts[1:], max(cfg.epochs, starts[-1] + 1)]
    pieces = [(start * steps, engine.lr_schedule(cfg.scheduler, cfg.learning_rate * s["peak_scale"],
                                                 (end - start) * steps, round(s["warmup_epochs"] * steps)))
              for s, start, end in zip(segments, starts, ends)]

    def lr(step: int) -> float:
        start, piece = next(p for p in reversed(pieces) if p[0] <= step or p is pieces[0])
        return piece(step - start)

    return lr


# ------------------------------------------------------------------------- elastic restarts


def restart_count() -> int:
    """How many times torchrun has restarted this worker group (0 outside torchrun)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def restart_note(name: str | None, resuming: bool) -> str | None:
    """A line for torchrun --max-restarts without --name: a restarted group could not find the run."""
    if int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0") or 0) > 0 and not name and not resuming:
        return ("torchrun --max-restarts: without --name a restarted group starts a new run; give --name "
                "(and --save-every or --save-minutes) so that it continues this one")
    return None


def elastic_resume(run_dir: Path, dist: distributed.Dist) -> Resume | None:
    """The run to continue when torchrun restarted the group: ``run_dir``'s last.pt, if it has one.

    The rule (README, several machines): a restarted group (TORCHELASTIC_RESTART_COUNT > 0) given a
    fixed --name continues that run from its last.pt; a run folder with no last.pt yet starts over.
    """
    last = run_dir / "last.pt"
    if restart_count() == 0 or not last.is_file():  # without --name run_dir has a new time stamp: no file
        return None
    ckpt = load_checkpoint(last)
    if dist.is_main:
        print(f"torchrun restart {restart_count()}: continuing {run_dir} from last.pt "
              f"(epoch {ckpt.get('epoch', 0) + 1}, step {ckpt.get('step', 0)})", flush=True)
    return Resume(ckpt, run_dir)


def elastic_cv_dir(cv_dir: Path) -> Path | None:
    """``cv_dir`` when torchrun restarted the group and it holds a CV run (its folds then continue)."""
    return cv_dir if restart_count() and is_cv_run(cv_dir) else None


# ------------------------------------------------------------------------- the record of a run


def command_line() -> str | None:
    """This process's command line as ``python train.py ...`` (None when not run as a script)."""
    return " ".join(["python", *sys.argv]) if sys.argv and sys.argv[0].endswith(".py") else None


def with_history(info: dict[str, Any], run_dir: Path, resumed_at: int | None) -> dict[str, Any]:
    """config.json's content for this session: the original command and one entry per resume.

    ``resumed_at``: the epochs finished when this session resumed the run (None: a new run).
    """
    if resumed_at is None:
        return {**info, "resumes": []}
    old = read_config(run_dir)
    resumes = [*old.get("resumes", []), {"command": info["command"], "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                                         "epoch": resumed_at, **({"restart": restart_count()} if restart_count() else {})}]
    return {**info, "command": old.get("command", info["command"]), "resumes": resumes}


def earlier_timing(run_dir: Path, resumed: bool) -> dict[str, float]:
    """timing.json of the sessions before this one ({} for a new run or an unreadable file)."""
    path = run_dir / "timing.json"
    if not resumed or not path.is_file():
        return {}
    try:
        import json

        timing = json.loads(path.read_text())
        return {k: float(v) for k, v in timing.items()} if isinstance(timing, dict) else {}
    except (ValueError, OSError, TypeError):
        return {}


def accumulated(earlier: dict[str, float], now: dict[str, float]) -> dict[str, float]:
    """Per-phase seconds over all sessions, and how many sessions there were."""
    keys = [*now, *(k for k in earlier if k not in now and k != "sessions")]
    return {**{k: round(earlier.get(k, 0.0) + now.get(k, 0.0), 3) for k in keys},
            "sessions": int(earlier.get("sessions", 1 if earlier else 0)) + 1}
