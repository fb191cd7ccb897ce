"""A run's folder: its name (never overwriting a run), the early write check, and config.json's content."""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from common.choices import display_name
from common.errors import UserError
from core import distributed
from core.training.config import TrainConfig
from core.training.resume import command_line

if TYPE_CHECKING:
    import data


def run_dir_for(cfg: TrainConfig, arch: str) -> Path:
    """storage/<--name>[-<Model> with several models], or storage/<Model>-<date>-<time>."""
    name = cfg.name if cfg.name and len(cfg.models) == 1 else (
        f"{cfg.name}-{display_name(arch)}" if cfg.name else
        f"{display_name(arch)}{'-pretrained' if cfg.pretrained else ''}-{time.strftime('%Y%m%d-%H%M%S')}")
    return Path(cfg.out) / name


def new_run_dir(cfg: TrainConfig, arch: str, dist: distributed.Dist) -> Path:
    """storage/<name>/, created by rank 0; an existing run is never overwritten."""
    run_dir = run_dir_for(cfg, arch)
    if dist.is_main:
        if (run_dir / "last.pt").exists() or (run_dir / "history.csv").exists():
            raise UserError(f"{run_dir} already holds a run; continue it with --resume {run_dir} "
                            f"or choose another --name")
        check_writable(run_dir)
    distributed.barrier(dist)
    return run_dir


def check_writable(folder: Path) -> None:
    """Create ``folder`` and prove a file can be written there, before any long work starts."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write to {folder} ({exc.strerror or exc}); choose another --out") from None


def run_info(arch: str, meta: dict[str, Any], world_size: int, source: "data.DataSource") -> dict[str, Any]:
    """config.json: every setting, the command, library versions and the data fingerprint."""
    import torchvision  # only for its version; importing it costs a second

    return {"arch": arch, "model": display_name(arch), **meta["config"],
            "command": command_line(),
            "world_size": world_size, "preprocess": meta["preprocess"],
            "data_layout": source.layout, "task": source.task, "classes": list(source.classes),
            "data_note": source.note,
            "data_fingerprint": {name: s.fingerprint() for name, s in source.splits.items()},
            "data_sizes": {name: len(s.paths) for name, s in source.splits.items()},
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "torchvision": torchvision.__version__, "numpy": np.__version__,
                         "cuda": torch.version.cuda, "platform": platform.platform()}}
