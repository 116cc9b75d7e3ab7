"""The rollout's journal: one compact record per counted analysis and per performance-gate verdict.

Kept in the persisted state (`RolloutState.journal`, `status.canary.journal`) so it survives
operator restarts; it starts empty with every canary and keeps the last `MAX_ENTRIES` records.
When the rollout ends, the rollout report (`modelops.rollout.report`) is built from it.

A record (pure dicts, floats rounded to `DIGITS` significant digits):
`{at, phase: performanceGate | shadow | step, weight, step?, attempt?, outcome, check?, values}`,
where `values` holds what was measured, candidate and stable side by side where both exist:

- a traffic step's analysis: `requests`, `successRate` (candidate), `stableSuccessRate` (only with
  `successRate.maxDrop`, the one check that measures the stable's rate), `p99Ms`, `stableP99Ms`
  (only with `p99Latency.maxRatio`), `clientErrorsRise`, `stableClientErrors`... every other check's
  value under its name (the shadow checks during the steps: `comparisons`, `agreement`, ...; a
  user's PromQL checks);
- a shadow analysis: `comparisons`, `agreement`, `maxAbsDiff`, `worstAbsDiff`, `cosine`;
- the performance gate: `requests`, `errors`, `throughputRps`, `p99Ms`, `p50Ms` of the candidate's
  load test, `stableRequests`, `stableErrors`, `stableThroughputRps`, `stableP99Ms`, `stableP50Ms`
  of the stable's, and `successRate` / `stableSuccessRate` (1 - errors / requests).
"""

from __future__ import annotations

import math
from datetime import datetime

from .analysis import AnalysisResult
from .state import PerformanceGateRecord, format_time

MAX_ENTRIES = 50
DIGITS = 6
PHASES = ("performanceGate", "shadow", "step")

# Analysis check name -> (journal key of its value, journal key of its stable value).
_NAMES = {"successRate": ("successRate", None), "successRateVsStable": ("successRate", "stableSuccessRate"),
          "p99LatencyMs": ("p99Ms", None), "p99LatencyVsStable": ("p99Ms", "stableP99Ms"),
          "clientErrorsVsStable": ("clientErrorsRise", None)}


def rounded(value: float) -> float:
    """`value` to DIGITS significant digits (status documents stay small and stable)."""
    if value == 0 or not math.isfinite(value):
        return float(value)
    return round(float(value), DIGITS - 1 - int(math.floor(math.log10(abs(value)))))


def check_values(checks) -> dict:
    """The measured numbers of an analysis' checks (CheckResults or their status dicts), by journal key."""
    out: dict = {}
    for c in checks:
        name, value, stable = ((c.get("name"), c.get("value"), c.get("stable")) if isinstance(c, dict)
                               else (c.name, c.value, c.stable))
        key, stable_key = _NAMES.get(name, (name, None))
        if value is not None and isinstance(value, (int, float)) and math.isfinite(value):
            out.setdefault(key, rounded(value))
        if stable_key and stable is not None and math.isfinite(stable):
            out.setdefault(stable_key, rounded(stable))
    return out


def analysis_entry(phase: str, result: AnalysisResult, *, weight: int, step: int | None = None,
                   at: datetime | None = None) -> dict:
    """The record of one counted analysis (phase `shadow` or `step`)."""
    out: dict = {"at": format_time(at or result.at), "phase": phase, "weight": int(weight)}
    if step is not None:
        out["step"] = int(step)
    out["outcome"] = result.outcome.value
    deciding = result.deciding
    if deciding is not None:
        out["check"] = deciding.name
    out["values"] = check_values(result.checks)
    return out


def gate_entry(rec: PerformanceGateRecord, outcome: str, check: str | None, at: datetime) -> dict:
    """The record of one performance-gate attempt's verdict (Passed | Failed | Inconclusive)."""
    out: dict = {"at": format_time(at), "phase": "performanceGate", "weight": 0, "attempt": rec.attempt,
                 "outcome": outcome}
    if check:
        out["check"] = check
    values: dict = {}
    for prefix, doc in (("", rec.candidate), ("stable", rec.stable)):
        for key, value in (doc or {}).items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                values[f"{prefix}{key[0].upper()}{key[1:]}" if prefix else key] = rounded(value)
        n, e = (doc or {}).get("requests"), (doc or {}).get("errors")
        if n and e is not None and n > 0:
            values["stableSuccessRate" if prefix else "successRate"] = rounded(max(0.0, 1.0 - e / n))
    out["values"] = values
    return out


def append(journal: tuple, entry: dict, limit: int = MAX_ENTRIES) -> tuple:
    """`journal` with `entry` last, at most `limit` records (the oldest go)."""
    return (tuple(journal) + (entry,))[-limit:]


__all__ = ["DIGITS", "MAX_ENTRIES", "PHASES", "analysis_entry", "append", "check_values", "gate_entry", "rounded"]
