"""Progress: tqdm bars in a terminal, one plain line per finished task in a log file.

Carriage-return bars written to a file fill it with half-drawn lines; when stderr is not a
terminal we print only a summary when a task ends (or nothing, for bars that vanish anyway).
"""
from __future__ import annotations

import sys
import time
from typing import Any, Iterable, Iterator, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def is_terminal() -> bool:
    return sys.stderr.isatty()


class PlainProgress:
    """The part of tqdm's interface we use, printing ``desc: n/total unit in s`` once at the end."""

    def __init__(self, total: int | None, desc: str, unit: str, initial: int = 0, quiet: bool = False) -> None:
        self.total, self.desc, self.unit, self.n, self.quiet = total, desc, unit, initial, quiet
        self.postfix = ""
        self.start = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if self.quiet:
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
             initial: int = 0) -> tqdm | PlainProgress:
    """A progress bar; ``transient`` bars (an epoch's steps) leave no line in a log file."""
    if not show:
        return PlainProgress(total, desc, unit, initial, quiet=True)
    if not is_terminal():
        return PlainProgress(total, desc, unit, initial, quiet=transient)
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=not transient, dynamic_ncols=True,
                file=sys.stderr)


def track(items: Iterable[T], total: int, desc: str, unit: str, show: bool = True) -> Iterator[T]:
    """Iterate over ``items`` with a progress bar (a plain summary line in a log file)."""
    with progress(total, desc, unit, show=show) as bar:
        for item in items:
            yield item
            bar.update()
