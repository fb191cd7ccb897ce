"""Ctrl-C and SIGTERM during training: finish the step, save last.pt, print the resume command."""
from __future__ import annotations

import signal
import sys
from pathlib import Path

import torch

from core import distributed, engine


class StopSignal:
    """SIGINT/SIGTERM ask the loop to finish its step, save last.pt and exit; a second Ctrl-C aborts."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: finishing this step and saving last.pt "
              "(Ctrl-C again to abort without saving)", file=sys.stderr, flush=True)

    def requested(self, dist: distributed.Dist, step: int, device: torch.device) -> bool:
        flag = self.signum is not None
        if dist.enabled:
            # Every rank must stop at the same step or the others would wait forever; agreeing
            # costs a sync, so ranks compare notes only every LOG_EVERY steps.
            if step % engine.LOG_EVERY:
                return False
            flag = distributed.all_reduce_sum(torch.tensor([float(flag)], device=device), dist).item() > 0
        return flag

    def exit_message(self, run_dir: Path, epoch: int, step: int) -> int:
        print(f"stopped during epoch {epoch} after step {step}; saved {run_dir / 'last.pt'}\n"
              f"  resume with: python train.py --resume {run_dir}", file=sys.stderr)
        return 128 + (self.signum or signal.SIGINT)

    def restore(self) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)
