"""Progress of long work: a bar on a terminal, a line every few seconds otherwise.

Owns how ``s3fuse cleanup`` (and any other long command) shows how far it got:
on a TTY one line redrawn in place, cleared before each ordinary output line;
elsewhere (a log file, a pipe, CI) a plain line at most every ``interval`` seconds,
so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, label: str, total: int | None = None, stream: TextIO | None = None, interval: float = 5.0):
        self.label = label
        self.total = total
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.interval = interval
        self._last_line = 0.0
        self._drawn = False

    def advance(self, amount: int = 1) -> None:
        self.done += amount
        if self.tty:
            self._draw()
        elif time.monotonic() - self._last_line >= self.interval:
            self._last_line = time.monotonic()
            print(f"{self.label}: {self._count()}", file=self.stream, flush=True)

    def print(self, line: str, file: TextIO | None = None) -> None:
        """An ordinary output line, without tearing the bar."""
        self._clear()
        print(line, file=file or sys.stdout, flush=True)
        if self.tty and self.done:
            self._draw()

    def finish(self) -> None:
        self._clear()

    def _count(self) -> str:
        if not self.total:
            return str(self.done)
        return f"{self.done}/{self.total} ({100 * self.done // self.total}%)"

    def _draw(self) -> None:
        bar = ""
        if self.total:
            filled = 30 * min(self.done, self.total) // self.total
            bar = "[" + "#" * filled + " " * (30 - filled) + "] "
        self.stream.write(f"\r\033[K{self.label}: {bar}{self._count()}")
        self.stream.flush()
        self._drawn = True

    def _clear(self) -> None:
        if self._drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._drawn = False
