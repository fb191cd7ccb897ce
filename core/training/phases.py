"""Where a run's wall time goes: setup, training steps, validation, checkpoint writes, the rest.

    phases = Phases(sync=torch.cuda.synchronize)     # on CUDA: queued work counts where it was queued
    with phases.time("validation"): ...
    print(phases.line()); write_json(run_dir / "timing.json", phases.summary())

Phases nest: the time of an inner phase (a checkpoint written mid-epoch) is taken out of the
outer one (the training steps), so the shares add up to the wall time.
"""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Callable, Iterator

ORDER = ("setup", "train steps", "validation", "checkpoints", "history")


class Phases:
    """Exclusive wall-clock seconds per named phase since creation."""

    def __init__(self, sync: Callable[[], None] | None = None) -> None:
        self.start = time.perf_counter()
        self.seconds: dict[str, float] = defaultdict(float)
        self.sync = sync
        self._stack: list[str] = []

    @contextmanager
    def time(self, name: str) -> Iterator[None]:
        if self.sync:
            self.sync()
        t0 = time.perf_counter()
        self._stack.append(name)
        try:
            yield
        finally:
            if self.sync:
                self.sync()
            self._stack.pop()
            spent = time.perf_counter() - t0
            self.seconds[name] += spent
            if self._stack:
                self.seconds[self._stack[-1]] -= spent

    def summary(self) -> dict[str, float]:
        """Seconds per phase, ``other`` (time in no phase) and ``total``; they add up."""
        total = time.perf_counter() - self.start
        names = [n for n in ORDER if n in self.seconds] + sorted(set(self.seconds) - set(ORDER))
        timed = {n: round(self.seconds[n], 3) for n in names}
        return {**timed, "other": round(max(total - sum(self.seconds.values()), 0.0), 3), "total": round(total, 3)}

    def line(self) -> str:
        """``time 156.0 s: train steps 120.1 s (77%), validation 20.3 s (13%), ...``"""
        s = self.summary()
        total = s.pop("total")
        parts = [f"{n} {v:.1f} s ({v / max(total, 1e-9):.0%})" for n, v in s.items()]
        return f"time {total:.1f} s: " + ", ".join(parts)
