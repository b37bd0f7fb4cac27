"""Progress of long CLI operations (planning 100,000 contacts, queueing their jobs, importing a file).

On a terminal: one line redrawn in place (a bar, the count, the rate, the time left). Anywhere
else (a log file, CI, a pipe): a plain line every ``every`` of the way, so logs stay readable
and grep-able. Always on stderr, so ``--json`` output on stdout stays clean for scripts.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Callable, Optional

BAR_WIDTH = 30
REDRAW_SECONDS = 0.1   # a terminal line is redrawn at most this often


class Progress:
    """``advance(n)`` as work is done, ``finish()`` at the end (also when ``total`` was wrong)."""

    def __init__(self, label: str, total: int, stream: Optional[IO[str]] = None, every: float = 0.1, tty: Optional[bool] = None) -> None:
        self.label = label
        self.total = max(0, int(total))
        self.stream = stream if stream is not None else sys.stderr
        self.tty = tty if tty is not None else bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = every
        self.done = 0
        self.started = time.monotonic()
        self._drawn_at = 0.0
        self._next_step = every
        self._finished = False

    def advance(self, count: int = 1) -> None:
        self.done += count
        fraction = self.fraction()
        if self.tty:
            now = time.monotonic()
            if now - self._drawn_at >= REDRAW_SECONDS:
                self._drawn_at = now
                self._write("\r" + self.line(), newline=False)
        elif fraction >= self._next_step and fraction < 1.0:
            while self._next_step <= fraction:
                self._next_step += self.every
            self._write(self.line())

    def finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        self.total = max(self.total, self.done)
        self._write(("\r" if self.tty else "") + self.line() + (" " * 8 if self.tty else ""))

    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 1.0

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        fraction = self.fraction()
        left = (self.total - self.done) / rate if rate > 0 and self.done < self.total else 0.0
        counts = f"{self.done:,}/{self.total:,} ({fraction * 100:.0f} %), {rate:,.0f}/s"
        timing = f", {left:.0f} s left" if left else f", {elapsed:.1f} s"
        if self.tty:
            filled = int(round(fraction * BAR_WIDTH))
            return f"{self.label} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {counts}{timing}"
        return f"{self.label}: {counts}{timing}"

    def _write(self, text: str, newline: bool = True) -> None:
        self.stream.write(text + ("\n" if newline else ""))
        self.stream.flush()


# What long operations take: a factory of Progress for a label and a total (None: report nothing).
ProgressFactory = Callable[[str, int], Progress]


def on_stderr(label: str, total: int) -> Progress:
    return Progress(label, total)
