"""The predictor's audit trail: one JSON line per protected request, never the payload.

Fields: `time` (UTC, ms), `caller` (the TokenReview username, e.g.
`system:serviceaccount:team-a:scorer`; `-` when unauthenticated or auth is off), `model`,
`version`, `protocol` (`rest`, `grpc`), `route` (the HTTP path or the gRPC method, which name only
the model), `status` (the HTTP status, or the gRPC code's name), `latency_ms`, and for a refused
request its `reason` (`missing_token`, `invalid_token`, `forbidden`, `unavailable`).

Lines are written to stdout (what `kubectl logs` collects), one `write(2)` each (whole lines,
never interleaved; no logging-module record, which cost ~15 µs a line here). Allowed
requests are sampled (`sample`, a fraction), refused ones never are; all lines share a rate limit
(`max_per_second`, a token bucket; 0: none), and the next line written says how many were
`suppressed` in between. The probes and `/metrics` are not audited.
"""

from __future__ import annotations

import os
import random
import time

import orjson


def write_stdout(line: bytes) -> None:
    view = memoryview(line)
    while view:
        view = view[os.write(1, view):]


class _Clock:
    """UTC `YYYY-MM-DDTHH:MM:SS.mmmZ`, the seconds formatted once per second."""

    def __init__(self):
        self._second, self._text = -1, ""

    def now(self) -> str:
        t = time.time()
        second = int(t)
        if second != self._second:
            self._second, self._text = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._text}.{int((t - second) * 1000):03d}Z"


class AuditLog:
    def __init__(self, sample: float = 1.0, max_per_second: float = 0.0, *, clock=time.monotonic,
                 rng=random.random, sink=write_stdout):
        if not 0.0 <= sample <= 1.0:
            raise ValueError(f"--audit-sample must be within [0, 1], got {sample}")
        if max_per_second < 0:
            raise ValueError(f"--audit-max-per-second must not be negative, got {max_per_second}")
        self.sample = sample
        self.rate = max_per_second
        self._clock, self._rng = clock, rng
        self._tokens = max(1.0, max_per_second)
        self._last = clock()
        self.suppressed = 0
        self._sink = sink
        self._utc = _Clock()

    def _admit(self, refused: bool) -> bool:
        if not refused and self.sample < 1.0 and self._rng() >= self.sample:
            return False  # sampled out: not counted as suppressed
        if self.rate <= 0:
            return True
        now = self._clock()
        self._tokens = min(max(1.0, self.rate), self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens < 1.0:
            self.suppressed += 1
            return False
        self._tokens -= 1.0
        return True

    def record(self, *, caller: str, model: str, version: str, protocol: str, route: str,
               status: int | str, latency_s: float, reason: str = "") -> None:
        if not self._admit(bool(reason)):
            return
        line = {"time": self._utc.now(), "audit": "predictor", "caller": caller, "model": model, "version": version,
                "protocol": protocol, "route": route, "status": status,
                "latency_ms": round(latency_s * 1000, 3)}
        if reason:
            line["reason"] = reason
        if self.suppressed:
            line["suppressed"], self.suppressed = self.suppressed, 0
        self._sink(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE))
