"""A tiny dependency-free progress reporter for long Monte Carlo runs.

:class:`Progress` writes one line to stderr and rewrites it in place (carriage return), e.g.
``ensemble: 12000/40000 networks (30%) 3.1 s``.  It stays silent when disabled, and by default
when stderr is not a terminal (so logs and test output are not littered with ``\\r`` lines);
``enabled=True`` forces it on.  Redraws are throttled to ``min_interval`` seconds.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """Single-line progress reporter.

    Parameters
    ----------
    total : int
        Number of items expected.
    label : str
        Prefix of the line ("ensemble").
    unit : str
        Name of the items ("networks").
    enabled : bool or None
        True: always report; False: never; None: report only if ``stream`` is a TTY.
    stream : file-like, optional
        Where to write; defaults to ``sys.stderr`` at construction time.
    min_interval : float
        Minimum seconds between redraws (the final line is always drawn).

    Examples
    --------
    >>> import io
    >>> buf = io.StringIO()
    >>> with Progress(4, enabled=True, stream=buf, min_interval=0) as p:
    ...     p.update(4)
    >>> buf.getvalue().splitlines()[-1].split(" (")[0].strip()
    'ensemble: 4/4 networks'
    """

    def __init__(
        self,
        total: int,
        *,
        label: str = "ensemble",
        unit: str = "networks",
        enabled: bool | None = None,
        stream: TextIO | None = None,
        min_interval: float = 0.1,
    ) -> None:
        self.total = int(total)
        self.label = label
        self.unit = unit
        self.stream = sys.stderr if stream is None else stream
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            try:
                enabled = bool(isatty()) if isatty is not None else False
            except (ValueError, OSError):  # closed or detached stream
                enabled = False
        self.enabled = bool(enabled)
        self.min_interval = float(min_interval)
        self.count = 0
        self._start = time.perf_counter()
        self._last_draw = -float("inf")
        self._width = 0
        self._closed = False

    def line(self) -> str:
        """The current status line (without carriage return)."""
        elapsed = time.perf_counter() - self._start
        pct = 100.0 * self.count / self.total if self.total > 0 else 100.0
        return f"{self.label}: {self.count}/{self.total} {self.unit} ({pct:.0f}%) {elapsed:.1f} s"

    def update(self, count: int = 1) -> None:
        """Record ``count`` more items and redraw if due."""
        self.count += int(count)
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self._last_draw >= self.min_interval or self.count >= self.total:
            self._draw()
            self._last_draw = now

    def _draw(self) -> None:
        text = self.line()
        # pad with blanks so a shorter line fully overwrites a longer previous one
        pad = max(0, self._width - len(text))
        self._width = len(text)
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()

    def close(self) -> None:
        """Draw the final line and end it with a newline (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self.enabled:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
