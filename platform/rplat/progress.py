"""Progress of a long command on stderr: a redrawn line with a total and an ETA on a terminal, a plain line every
~10 s when stderr is a file or a pipe (a runner's log, CI), so a long import, export or job is never silent.

    with Progress("import documents", total=n, unit="documents") as progress:
        for batch in batches:
            ...
            progress.advance(len(batch))

`total` may be None (a stream of unknown length): the line then shows the count and the rate. The interval of
the plain lines is `RPLAT_PROGRESS_SECONDS` (default 10) so tests can see them quickly.
"""

from __future__ import annotations

import os
import sys
import time
from types import TracebackType
from typing import TextIO

DEFAULT_SECONDS = 10.0
_TTY_SECONDS = 0.2


def _interval() -> float:
    raw = os.environ.get("RPLAT_PROGRESS_SECONDS")
    try:
        return float(raw) if raw else DEFAULT_SECONDS
    except ValueError:
        return DEFAULT_SECONDS


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _count(n: int) -> str:
    return f"{n:,}"


class Progress:
    """Counts work done and shows it; `quiet` shows nothing (the counts are still kept)."""

    def __init__(self, what: str, total: int | None = None, *, unit: str = "rows", stream: TextIO | None = None,
                 quiet: bool = False, every: float | None = None) -> None:
        self.what = what
        self.total = total
        self.unit = unit
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = quiet
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = (_TTY_SECONDS if self.tty else _interval()) if every is None else every
        self.started = time.monotonic()
        self._shown = self.started
        self._drawn = False

    def set_total(self, total: int | None) -> None:
        self.total = total

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if not self.quiet and now - self._shown >= self.every:
            self._shown = now
            self._show(now)

    def line(self, now: float | None = None) -> str:
        """What the progress says now, e.g. `import documents: 40,000/100,000 documents (40%), 9,812/s, ETA 0:06`."""
        elapsed = max((time.monotonic() if now is None else now) - self.started, 1e-9)
        rate = self.done / elapsed
        if self.total:
            pct = 100.0 * self.done / self.total
            head = f"{self.what}: {_count(self.done)}/{_count(self.total)} {self.unit} ({pct:.0f}%)"
            left = max(self.total - self.done, 0)
            eta = f", ETA {_duration(left / rate)}" if rate > 0 and left else ""
            return f"{head}, {rate:,.0f}/s{eta}"
        return f"{self.what}: {_count(self.done)} {self.unit}, {rate:,.0f}/s, {_duration(elapsed)} elapsed"

    def _show(self, now: float) -> None:
        text = self.line(now)
        if self.tty:
            self.stream.write("\r\x1b[K" + text)
            self._drawn = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End the redrawn line (a terminal) so what follows starts on its own line."""
        if self._drawn and not self.quiet:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
