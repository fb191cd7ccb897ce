"""Ctrl-C and SIGTERM during training: finish the step, save last.pt, print the resume command."""
from __future__ import annotations

import signal
import sys
from pathlib import Path


class StopSignal:
    """SIGINT/SIGTERM ask the loop to finish its step, save last.pt and exit; a second Ctrl-C aborts.

    The loop reads ``signum`` after every step; under torchrun the ranks agree on it at that step
    (``distributed.any_rank``), so every rank stops at the next step. ``verbose``: only the main
    process prints.
    """

    def __init__(self, verbose: bool = True) -> None:
        self.signum: int | None = None
        self.verbose = verbose
        self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        if self.verbose:
            print(f"\n{signal.Signals(signum).name}: finishing this step and saving last.pt "
                  "(Ctrl-C again to abort without saving)", file=sys.stderr, flush=True)

    def exit_message(self, run_dir: Path, epoch: int, step: int) -> int:
        if self.verbose:
            print(f"stopped during epoch {epoch} after step {step}; saved {run_dir / 'last.pt'}\n"
                  f"  resume with: python train.py --resume {run_dir}", file=sys.stderr)
        return 128 + (self.signum or signal.SIGINT)

    def restore(self) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)
