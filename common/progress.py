"""Progress: tqdm bars in a terminal, plain lines at a steady pace in a log file.

Carriage-return bars written to a file fill it with half-drawn lines; when stderr is not a
terminal we instead print a plain line every ``PROGRESS_SECONDS`` seconds (default 30) while a
task runs (done/total, images per second, the loss so far where there is one, time left), and
a summary line when it ends (not for transient tasks such as an epoch, which the trainer sums up).
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable, Iterable, Iterator, TypeVar

from tqdm import tqdm

from common.errors import UserError

T = TypeVar("T")
DEFAULT_SECONDS = 30.0


def is_terminal() -> bool:
    return sys.stderr.isatty()


def interval_seconds() -> float:
    """Seconds between two progress lines in a log file: ``PROGRESS_SECONDS``, default 30."""
    text = os.environ.get("PROGRESS_SECONDS", "").strip()
    if not text:
        return DEFAULT_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # also rejects nan
        raise UserError(f"PROGRESS_SECONDS={text!r} is not a number of seconds >= 0; unset it or use e.g. "
                        f"PROGRESS_SECONDS=30")
    return seconds


def duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``2.5 h``: how long, to the precision a person waiting needs."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class PlainProgress:
    """The part of tqdm's interface we use, printing plain lines: one every ``every`` seconds, a summary
    at the end (unless ``transient``), nothing at all when ``quiet``.

    ``per_step`` (images in one step of a batched task) turns steps/s into images/s; ``status`` gives
    extra values for a line (e.g. the loss so far), asked only when a line is printed.
    """

    def __init__(self, total: int | None, desc: str, unit: str, initial: int = 0, quiet: bool = False,
                 transient: bool = False, every: float = DEFAULT_SECONDS, per_step: int | None = None,
                 status: Callable[[], dict[str, str]] | None = None) -> None:
        self.total, self.desc, self.unit, self.n, self.quiet = total, desc, unit, initial, quiet
        self.transient, self.every, self.per_step, self.status = transient, every, per_step, status
        self.initial, self.postfix = initial, ""
        self.start = self.last_line = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if not self.quiet and now - self.last_line >= self.every and (self.total is None or self.n < self.total):
            self.last_line = now
            print(self.line(now), file=sys.stderr, flush=True)

    def line(self, now: float) -> str:
        """``epoch 3: step 120/500 (24%), 85.3 img/s, loss 0.4321, 2 min left``."""
        done, seconds = self.n - self.initial, max(now - self.start, 1e-9)
        rate = done / seconds
        parts = [f"{self.unit} {self.n}/{self.total} ({self.n / self.total:.0%})" if self.total
                 else f"{self.unit} {self.n}"]
        parts.append(f"{rate * self.per_step:.1f} img/s" if self.per_step else f"{rate:.1f} {self.unit}/s")
        if self.status is not None:
            parts += [f"{key} {value}" for key, value in self.status().items()]
        if self.total and done > 0:
            parts.append(f"{duration((self.total - self.n) / rate)} left")
        return f"{self.desc}: " + ", ".join(parts)

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if self.quiet or self.transient:
            return
        total = f"/{self.total}" if self.total is not None else ""
        extra = f" ({self.postfix})" if self.postfix else ""
        print(f"{self.desc}: {self.n}{total} {self.unit} in {time.perf_counter() - self.start:.1f} s{extra}",
              file=sys.stderr, flush=True)

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(total: int | None, desc: str, unit: str, *, show: bool = True, transient: bool = False,
             initial: int = 0, per_step: int | None = None,
             status: Callable[[], dict[str, str]] | None = None) -> tqdm | PlainProgress:
    """A progress bar; in a log file, plain lines at a steady pace (see PlainProgress for ``per_step`` and
    ``status``). A ``transient`` bar (an epoch's steps) leaves no summary line in a log file."""
    if not show:
        return PlainProgress(total, desc, unit, initial, quiet=True)
    if not is_terminal():
        return PlainProgress(total, desc, unit, initial, transient=transient, every=interval_seconds(),
                             per_step=per_step, status=status)
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=not transient, dynamic_ncols=True,
                file=sys.stderr)


def track(items: Iterable[T], total: int, desc: str, unit: str, show: bool = True,
          per_step: int | None = None) -> Iterator[T]:
    """Iterate over ``items`` with a progress bar (plain lines in a log file)."""
    with progress(total, desc, unit, show=show, per_step=per_step) as bar:
        for item in items:
            yield item
            bar.update()


def plural(count: int, word: str) -> str:
    """``1 step``, ``2 steps``: a count with its noun in the right number."""
    return f"{count} {word}{'' if count == 1 else 's'}"
