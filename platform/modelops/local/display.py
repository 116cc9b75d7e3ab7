"""Progress output of `modelops local up`: event lines, and a live table of what serves.

On a terminal the table (version, role, weight, step, checks, req/s, p99) is redrawn in place
under the event lines; otherwise (a pipe, a log file, the demo) it is printed as one line every
`every` seconds, and event lines as they happen.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TextIO


@dataclass
class Row:
    version: str
    role: str  # stable | canary
    weight: int
    step: str = ""  # "2/3" for a canary
    checks: str = ""  # "4 passed, 0 failed" (last analysis), canary only
    analyses: str = ""  # "failed 1/2" analyses so far, canary only
    rps: float | None = None
    p99_ms: float | None = None


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


class Display:
    def __init__(self, out: TextIO | None = None, *, live: bool | None = None, every: float = 5.0,
                 t0: float | None = None):
        self.out = out or sys.stdout
        self.live = self.out.isatty() if live is None else live
        self.every = every
        self.t0 = time.monotonic() if t0 is None else t0
        self._drawn = 0  # lines of the live table on screen
        self._last_line = 0.0
        self._last_key = None

    def _stamp(self) -> str:
        return f"[{time.monotonic() - self.t0:6.1f}s]"

    def _clear(self) -> None:
        if self._drawn:
            self.out.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0

    def event(self, text: str) -> None:
        if self.live:
            self._clear()
        self.out.write(f"{self._stamp()} {text}\n")
        self.out.flush()
        self._last_key = None  # show the table again after an event

    def table(self, rows: list[Row], summary: str) -> None:
        if self.live:
            self._clear()
            lines = [f"  {summary}",
                     f"  {'version':<9}{'role':<8}{'weight':>7}{'step':>6}  {'last analysis':<22}{'analyses':<12}"
                     f"{'req/s':>8}{'p99 ms':>9}"]
            for r in rows:
                lines.append(f"  {'v' + r.version:<9}{r.role:<8}{r.weight:>6}%{r.step:>6}  {r.checks:<22}"
                             f"{r.analyses:<12}{_num(r.rps, '.1f'):>8}{_num(r.p99_ms, '.2f'):>9}")
            self.out.write("\n".join(lines) + "\n")
            self.out.flush()
            self._drawn = len(lines)
            return
        if not rows:
            return  # nothing serves yet: the event lines say what is going on
        now = time.monotonic()
        key = tuple((r.version, r.weight) for r in rows)
        if now - self._last_line < self.every and key == self._last_key:
            return
        self._last_line, self._last_key = now, key
        parts = []
        for r in rows:
            text = f"v{r.version} {r.role} {r.weight}%"
            if r.step:
                text += f" step {r.step}"
            text += f" {_num(r.rps, '.0f')} req/s p99 {_num(r.p99_ms, '.1f')} ms"
            if r.checks:
                text += f" (last analysis: {r.checks}; {r.analyses})"
            parts.append(text)
        self.out.write(f"{self._stamp()}   {' | '.join(parts) or summary}\n")
        self.out.flush()

    def close(self) -> None:
        self._drawn = 0
