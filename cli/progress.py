"""Progress bars for long commands, on stderr, only where a person sees them.

A bar is drawn when stderr is a terminal that understands cursor control -
whatever stdout is, so ``vdisk verify --data D > report.txt`` still shows
one - and never with ``--quiet``, when stderr is not a terminal, or when
``TERM`` is ``dumb`` or unset: then nothing at all is written, not even a
label, so logs and pipes stay clean.

A :class:`Progress` is the ``progress(phase, done, total)`` callback the
library's long operations take (verify, snapshot deletion, compact; later
convert, import, export, send, receive). Each phase gets its own line:
label, bar, percentage, rate and ETA, redrawn at most ten times a second.
"""

from __future__ import annotations

import os
import sys
import time

REDRAW_SECONDS = 0.1
RATE_AFTER = 0.5
# phase -> (label, unit); unit "bytes" prints sizes and byte rates.
PHASES = {
    "trees": ("metadata trees", "nodes"),
    "data": ("data blocks", "blocks"),
    "scan": ("finding blocks only it holds", "nodes"),
    "sweep": ("freeing blocks", "runs"),
    "compact": ("punching free space", "bytes"),
}


def wanted(stream=None, quiet: bool = False) -> bool:
    """Whether a bar should be drawn on ``stream`` (stderr by default)."""
    stream = sys.stderr if stream is None else stream
    if quiet or os.environ.get("TERM", "dumb") in ("", "dumb"):
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """The bars of one command; a no-op unless :func:`wanted`."""

    def __init__(self, quiet: bool = False, stream=None, phases: dict | None = None):
        self.stream = sys.stderr if stream is None else stream
        self.enabled = wanted(self.stream, quiet)
        self.phases = {**PHASES, **(phases or {})}
        self.phase = None
        self._start = 0.0
        self._drawn = 0.0
        self._last = (0, 0)

    def __call__(self, phase: str, done: int, total: int):
        if not self.enabled:
            return
        now = time.monotonic()
        if phase != self.phase:
            self._finish_line()
            self.phase, self._start, self._drawn = phase, now, 0.0
        self._last = (done, total)
        if now - self._drawn >= REDRAW_SECONDS or done >= total:
            self._drawn = now
            self._draw(done, total, now)

    def close(self):
        self._finish_line()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _finish_line(self):
        if self.phase is None:
            return
        done, total = self._last
        self._draw(done, total, time.monotonic(), final=True)
        self._write("\n")
        self.phase = None

    def _draw(self, done: int, total: int, now: float, final: bool = False):
        label, unit = self.phases.get(self.phase, (self.phase, "items"))
        elapsed = max(now - self._start, 1e-6)
        rate = done / elapsed
        frac = min(1.0, done / total) if total > 0 else 1.0
        amount = (f"{_size(done)}/{_size(total)}" if unit == "bytes"
                  else f"{done}/{total} {unit}")
        if final:
            tail = f"{amount} in {_clock(elapsed)}"
        elif elapsed < RATE_AFTER or rate <= 0:
            tail = amount           # too early for a rate that means anything
        else:
            speed = f"{_size(int(rate))}/s" if unit == "bytes" else f"{rate:.0f} {unit}/s"
            tail = f"{amount}  {speed}  ETA {_clock(max(0, total - done) / rate)}"
        columns = _columns(self.stream)
        # A bar of one width for the whole phase, whatever the tail's length.
        bar = min(40, columns - len(label) - 50)
        pct = f"{int(frac * 100):3d}%"
        if bar >= 10:
            fill = int(frac * bar)
            text = f"{label}  [{'#' * fill}{'.' * (bar - fill)}]  {pct}  {tail}"
        else:
            text = f"{label}  {pct}  {tail}"
        # \r and erase-to-end-of-line: each draw replaces the last.
        self._write("\r" + text[:columns - 1] + "\x1b[K")

    def _write(self, s: str):
        try:
            self.stream.write(s)
            self.stream.flush()
        except (OSError, ValueError):
            self.enabled = False


def _size(n: int) -> str:
    # Imported here: only the phases counted in bytes (compact) print sizes.
    from vdisk.units import format_size
    return format_size(n)


def _columns(stream) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns or 80
    except (OSError, ValueError, AttributeError):
        return 80


def _clock(seconds: float) -> str:
    s = int(seconds + 0.5)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
