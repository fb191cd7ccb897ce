"""bench.py's lab section: train.py's own fit() end to end, and where its wall time goes.

Unlike the train section (a timed loop of training steps), this runs everything a user's run does:
setup and caching, training steps, validation each epoch, best.pt/last.pt writes, history. It reads
each run's timing.json and reports the share of the wall time spent outside training steps (the
issue's target: at most 15%).
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch

import data
from core import distributed
from core.training.config import TrainConfig
from core.training.trainer import fit
from models import display_name

OUTSIDE_TARGET = 0.15  # share of wall time outside training steps


def benchmark_lab(root: Path, models: tuple[str, ...], cfg: TrainConfig, device: torch.device) -> list[dict[str, Any]]:
    """One fit() per architecture on ``root`` with ``cfg`` (epochs, batch, size); a row of phase seconds each."""
    source = data.open_data(root)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in models:
            run_cfg = TrainConfig(**{**cfg.__dict__, "models": (arch,), "data": str(root), "out": tmp, "name": arch})
            run_dir = fit(arch, run_cfg, source, device, distributed.Dist(), None)
            timing = json.loads((run_dir / "timing.json").read_text())
            outside = 1 - timing.get("train steps", 0.0) / max(timing["total"], 1e-9)
            rows.append({"name": arch, **timing, "outside_steps_share": round(outside, 4)})
    return rows


def format_lab(rows: list[dict[str, Any]]) -> str:
    phases = ("setup", "train steps", "validation", "checkpoints", "other")
    lines = [f"{'architecture':<12} {'total s':>8} " + " ".join(f"{p:>12}" for p in phases) + f" {'outside':>8}"]
    for r in rows:
        lines.append(f"{display_name(r['name']):<12} {r['total']:>8.1f} "
                     + " ".join(f"{r.get(p, 0.0):>12.1f}" for p in phases) + f" {r['outside_steps_share']:>8.1%}")
    return "\n".join(lines) + f"\n(outside: share of wall time not in training steps; target <= {OUTSIDE_TARGET:.0%})"
