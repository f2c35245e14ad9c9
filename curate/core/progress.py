"""One progress style for every long step.

On a terminal: a bar with the total, the rate and the time left (tqdm). Off a terminal
(a log file, CI, `| tee`): no carriage-return frames, a plain line every `every` seconds
while the step runs, and a closing line, only for steps that ran long enough to print one.
`curate --quiet` draws nothing. A step with nothing to do (a known total of 0) draws
nothing either.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import TextIO

import click

LOG_EVERY_S = 10.0


def plural(n: int, word: str, many: str | None = None) -> str:
    """'1 image', '2 images', '1,024 images'."""
    return f"{n:,} {word if n == 1 else (many or word + 's')}"


def quiet() -> bool:
    ctx = click.get_current_context(silent=True)
    return bool(ctx and ctx.find_root().meta.get("curate.quiet"))


def _duration(s: float) -> str:
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """`with Progress("embed", total, "image") as p: p.update(n)`; the unit is singular."""

    def __init__(self, desc: str, total: int | None = None, unit: str = "item", *, stream: TextIO | None = None,
                 every: float = LOG_EVERY_S, clock: Callable[[], float] = time.monotonic,
                 enabled: bool | None = None):
        self.desc, self.total, self.unit = desc, total, unit
        self.stream = stream or sys.stderr
        self.every, self.clock = every, clock
        self.n = 0
        self.started = self.last_line = clock()
        self.lines = 0
        self.enabled = (not quiet()) if enabled is None else enabled
        self._bar = None
        self._open_bar()

    def _open_bar(self) -> None:
        """The terminal's bar, drawn once there is something to do (never for a known 0)."""
        if self._bar is None and self.enabled and self.total != 0 and self._tty():
            from tqdm import tqdm

            try:
                width = os.get_terminal_size(self.stream.fileno()).columns
            except (OSError, ValueError, AttributeError):
                width = 0
            # a terminal that does not say its width (0 columns) would get an empty bar
            self._bar = tqdm(total=self.total, desc=self.desc, unit=f" {self.unit}s", dynamic_ncols=width > 0,
                             ncols=None if width > 0 else 100, smoothing=0.05, mininterval=0.5, file=self.stream,
                             initial=self.n)

    def _tty(self) -> bool:
        try:
            return self.stream.isatty()
        except (AttributeError, ValueError):
            return False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __call__(self, n: int) -> None:
        self.update(n)

    def reset(self, total: int | None) -> None:
        """Start counting again toward another total (e.g. once a step knows its size), and the
        clock with it: what came before (a model loading, label prompts encoded) is not the
        step's work, so the log's rate and time left are the step's own, as the terminal bar's are."""
        self.total, self.n = total, 0
        self.started = self.last_line = self.clock()
        if self._bar is not None:
            self._bar.reset(total=total)
        else:
            self._open_bar()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
            return
        if not self.enabled or self._tty():
            return
        now = self.clock()
        if now - self.last_line >= self.every:
            self.last_line = now
            self.lines += 1
            print(self._line(now), file=self.stream, flush=True)

    def _rate(self, now: float) -> float:
        return self.n / max(now - self.started, 1e-9)

    def _line(self, now: float) -> str:
        rate = self._rate(now)
        if self.total:
            left = (self.total - self.n) / rate if rate > 0 else float("inf")
            eta = _duration(left) if left != float("inf") else "?"
            return (f"{self.desc}: {self.n:,}/{plural(self.total, self.unit)} ({100 * self.n / self.total:.0f}%), "
                    f"{rate:,.1f} {self.unit}s/s, {eta} left")
        return f"{self.desc}: {plural(self.n, self.unit)}, {rate:,.1f} {self.unit}s/s"

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            return
        if self.enabled and self.lines:
            now = self.clock()
            print(f"{self.desc}: {plural(self.n, self.unit)} in {_duration(now - self.started)} "
                  f"({self._rate(now):,.1f} {self.unit}s/s)", file=self.stream, flush=True)
            self.lines = 0
