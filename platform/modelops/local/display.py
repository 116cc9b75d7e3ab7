"""Progress output of `modelops local up`: event lines, and a live table of what serves.

On a terminal the table (version, role, weight, step, checks, req/s, p99) is a `rich` live
display, redrawn in place under the event lines (which `rich` prints above it); otherwise (a
pipe, a log file, the demo) it is printed as one line every `every` seconds, and event lines as
they happen.
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
        self._last_line = 0.0
        self._last_key = None
        self._console = None  # rich's Console and Live, on a terminal
        self._live = None
        if self.live:
            from rich.console import Console

            self._console = Console(file=self.out, force_terminal=True, highlight=False)

    def _stamp(self) -> str:
        return f"[{time.monotonic() - self.t0:6.1f}s]"

    def event(self, text: str) -> None:
        if self._console is not None:  # printed above the live table while it runs
            self._console.print(f"{self._stamp()} {text}", markup=False, highlight=False, soft_wrap=True)
            return
        self.out.write(f"{self._stamp()} {text}\n")
        self.out.flush()
        self._last_key = None  # show the table again after an event

    @staticmethod
    def _rich_table(rows: list[Row], summary: str):
        from rich import box
        from rich.table import Table

        t = Table(title=summary, title_justify="left", box=box.SIMPLE_HEAD)
        for name, justify in (("version", "left"), ("role", "left"), ("weight", "right"), ("step", "right"),
                              ("last analysis", "left"), ("analyses", "left"), ("req/s", "right"),
                              ("p99 ms", "right")):
            t.add_column(name, justify=justify)
        for r in rows:
            t.add_row(f"v{r.version}", r.role, f"{r.weight}%", r.step, r.checks, r.analyses,
                      _num(r.rps, ".1f"), _num(r.p99_ms, ".2f"))
        return t

    def table(self, rows: list[Row], summary: str) -> None:
        if self._console is not None:
            table = self._rich_table(rows, summary)
            if self._live is None:
                from rich.live import Live

                self._live = Live(table, console=self._console, auto_refresh=False, redirect_stdout=False,
                                  redirect_stderr=False)
                self._live.start(refresh=True)
            else:
                self._live.update(table, refresh=True)
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
        if self._live is not None:
            self._live.stop()  # the last table stays on screen
            self._live = None
