"""The performance gate: a bounded load test of the candidate, against a budget and against the
same test of the stable version run just before, before shadow or traffic (pure).

The engine asks for it with a `LoadTest` action (version, attempt, concurrency, duration); the
platform runs `modelops loadtest` against the stable's predictor, then the candidate's (the
operator: a Job, reporting through its termination message; local mode: in process) and passes
back a `LoadTestResult` with both documents (`{"requests", "errors", "throughput_rps", "p50_ms",
"p99_ms", ...}`), or an error. The verdict (`judge`):

- `requests`: the candidate answered at least one request (else Failed);
- `errors`: the candidate's test had no error (a non-200, a timeout) (else Failed);
- `maxP99Ms` (when set): the candidate's p99 <= it;
- `minThroughputRatio` (unless 0): the candidate's throughput >= ratio x the stable's;
  inconclusive when the stable's test answered nothing (no baseline).
A document that cannot be read (missing, not a number, NaN) is inconclusive, never a pass.

The phase (`progress`): Passed goes on (shadow, else the first step); Failed rolls the candidate
back with weight 0 throughout (reason PerformanceGateFailed, the deciding check named). An
inconclusive attempt (an unreadable result, an error, no result `timeout` after it was asked) is
retried after an interval as a new attempt; after `inconclusiveLimit` attempts the candidate is
rolled back (PerformanceGateInconclusive). The attempt and, once obtained, both tests' numbers and
the verdict are in `status.canary.performanceGate`: a restart resumes the same attempt (the
platform finds its tests by `LoadTest.key`) and never runs a decided gate again.
"""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import timedelta
from typing import Callable

from ..deployment.spec import PerformanceGateSpec
from . import journal
from .actions import LoadTest, LoadTestResult, PhaseResult
from .analysis import CheckResult, Outcome, _fmt
from .state import Phase, PerformanceGateRecord, format_time
from .stepping import Step, roll_back

GRACE_SECONDS = 300.0  # beyond the two tests' durations: Pod scheduling, image pulls, the model loading
_FIELDS = {"requests": "requests", "errors": "errors", "throughput_rps": "throughputRps", "p50_ms": "p50Ms",
           "p99_ms": "p99Ms"}


def timeout_seconds(spec: PerformanceGateSpec) -> float:
    """How long after it was asked an attempt may go without a result."""
    return 2 * spec.duration_seconds + GRACE_SECONDS


def numbers(doc: object) -> dict | str:
    """The status form of a load-test document ({requests, errors, throughputRps, p50Ms, p99Ms}),
    or why it cannot be read."""
    if not isinstance(doc, dict):
        return f"the result is not a JSON object ({type(doc).__name__})"
    out = {}
    for key, name in _FIELDS.items():
        value = doc.get(key)
        if value is None and key in ("p50_ms", "p99_ms") and doc.get("requests") == 0:
            continue  # nothing answered: no latency
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            return f"{key} is {value!r}, not a number >= 0"
        out[name] = float(value)
    return out


def judge(spec: PerformanceGateSpec, stable_doc: object, candidate_doc: object
          ) -> tuple[Outcome, list[CheckResult], dict]:
    """The gate's verdict, its checks, and the numbers it was decided on (pure)."""
    stable, candidate = numbers(stable_doc), numbers(candidate_doc)
    for who, n in (("the candidate's", candidate), ("the stable's", stable)):
        if isinstance(n, str):
            return Outcome.INCONCLUSIVE, [CheckResult("loadTest", Outcome.INCONCLUSIVE, None,
                                                      f"{who} load test result is unreadable: {n}")], {}
    found = {"requests": candidate["requests"], "errors": candidate["errors"],
             "throughputRps": candidate["throughputRps"], "stableThroughputRps": stable["throughputRps"]}
    for key, name in (("p99Ms", "p99Ms"), ("p99Ms", "stableP99Ms")):
        side = candidate if name == "p99Ms" else stable
        if key in side:
            found[name] = side[key]
    checks: list[CheckResult] = []
    n = candidate["requests"]
    checks.append(CheckResult("requests", Outcome.PASSED if n > 0 else Outcome.FAILED, n,
                              f"{_fmt(n)} requests answered" if n > 0 else "no request answered"))
    e = candidate["errors"]
    checks.append(CheckResult("errors", Outcome.FAILED if e > 0 else Outcome.PASSED, e,
                              f"{_fmt(e)} errors ({_fmt(n)} requests)" if e > 0 else "no errors"))
    p99, base = candidate.get("p99Ms"), stable.get("p99Ms")
    vs = f" (stable {_fmt(base)} ms)" if base is not None else ""
    if spec.max_p99_ms is not None and p99 is not None:
        ok = p99 <= spec.max_p99_ms
        checks.append(CheckResult("maxP99Ms", Outcome.PASSED if ok else Outcome.FAILED, p99,
                                  f"p99 {_fmt(p99)} ms {'<=' if ok else '>'} max {_fmt(spec.max_p99_ms)} ms{vs}"))
    if spec.min_throughput_ratio > 0:
        have, ref = candidate["throughputRps"], stable["throughputRps"]
        if ref <= 0:
            checks.append(CheckResult("minThroughputRatio", Outcome.INCONCLUSIVE, None,
                                      "the stable's load test answered nothing: no baseline"))
        else:
            ratio = have / ref
            found["throughputRatio"] = ratio
            ok = ratio >= spec.min_throughput_ratio
            checks.append(CheckResult(
                "minThroughputRatio", Outcome.PASSED if ok else Outcome.FAILED, ratio,
                f"{_fmt(have)} rps = {_fmt(ratio)} x the stable's {_fmt(ref)} rps "
                f"{'>=' if ok else '<'} min {_fmt(spec.min_throughput_ratio)}"))
    outcomes = {c.outcome for c in checks}
    outcome = (Outcome.FAILED if Outcome.FAILED in outcomes else
               Outcome.INCONCLUSIVE if Outcome.INCONCLUSIVE in outcomes else Outcome.PASSED)
    return outcome, checks, found


def _message(checks: list[CheckResult], outcome: Outcome) -> tuple[str | None, str]:
    deciding = next((c for c in checks if c.outcome == outcome), None) if outcome != Outcome.PASSED else None
    if deciding is not None:
        return deciding.name, f"{deciding.name}: {deciding.message}"
    return None, "; ".join(c.message for c in checks if c.outcome == Outcome.PASSED)


# --- the phase (engine) ----------------------------------------------------------------------
def enter(s: Step, obs, after: Callable[[], None]) -> None:
    st = s.state
    s.set(phase=Phase.PERFORMANCE_GATE, weight=0, step=0, gate=None,
          performance_gate=PerformanceGateRecord(st.version, 1, s.now), reason="PerformanceGate",
          message=f"v{st.version} under its performance gate (load tests of v{st.stable_version}, then v{st.version})")
    progress(s, obs, after)


def progress(s: Step, obs, after: Callable[[], None]) -> None:
    """One pass of the performance gate (phase PerformanceGate); `after` starts what follows."""
    st = s.state
    spec = s.policy.performance_gate
    rec = st.performance_gate
    if spec is None or (rec is not None and rec.version == st.version and rec.outcome == "Passed"):
        after()  # the gate was removed from the spec meanwhile, or it passed already
        return
    if rec is None or rec.version != st.version:
        enter(s, obs, after)
        return
    if obs.canary_ready is False:  # not serving yet: its attempt's clock starts once it does
        s.set(performance_gate=replace(rec, requested_at=s.now))
        s.hold("CanaryNotReady", f"v{st.version} is not ready yet: its performance gate waits")
        return
    if rec.requested_at is not None and s.now < rec.requested_at:
        s.hold("PerformanceGateRetry", f"{rec.message}; attempt {rec.attempt} at {format_time(rec.requested_at)}")
        return
    test = LoadTest(st.version, st.stable_version, rec.attempt, spec.concurrency, spec.duration_seconds)
    got = obs.load_test
    if got is None or got.version != st.version or got.attempt != rec.attempt:
        s.actions.append(test)
        s.hold("PerformanceGateRunning", f"load testing v{st.stable_version}, then v{st.version} "
                                         f"(attempt {rec.attempt}, c{spec.concurrency}, {spec.duration})")
        return
    if got.running:
        started = rec.requested_at or s.now
        limit = timeout_seconds(spec)
        if s.now >= started + timedelta(seconds=limit):
            _inconclusive(s, rec, "loadTest", f"no result {_fmt(limit)} s after attempt {rec.attempt} was asked")
        else:
            s.hold("PerformanceGateRunning", f"the load tests of attempt {rec.attempt} run "
                                             f"(asked at {format_time(started)})")
        return
    if got.error is not None:
        _inconclusive(s, rec, "loadTest", f"the load tests failed: {got.error}")
        return
    outcome, checks, found = judge(spec, got.stable, got.candidate)
    check, text = _message(checks, outcome)
    stable_n, candidate_n = numbers(got.stable), numbers(got.candidate)
    rec = replace(rec, stable=stable_n if isinstance(stable_n, dict) else None,
                  candidate=candidate_n if isinstance(candidate_n, dict) else None)
    if outcome == Outcome.INCONCLUSIVE:
        _inconclusive(s, rec, check, text)
        return
    verdict = "Passed" if outcome == Outcome.PASSED else "Failed"
    text = f"performance gate {verdict.lower()}: {text}"
    s.set(performance_gate=replace(rec, outcome=verdict, check=check, message=text, decided_at=s.now))
    s.log(journal.gate_entry(rec, verdict, check, s.now))
    s.actions.append(PhaseResult("performanceGate", st.version, st.stable_version, verdict, check, text, found))
    if outcome == Outcome.PASSED:
        s.notify("PerformanceGatePassed", reason="PerformanceGatePassed", message=f"v{st.version} {text}")
        after()
    else:
        s.notify("PerformanceGateFailed", reason="PerformanceGateFailed", message=text, check=check)
        roll_back(s, "PerformanceGateFailed", text, check=check)


def _inconclusive(s: Step, rec: PerformanceGateRecord, check: str | None, why: str) -> None:
    st = s.state
    limit = s.policy.inconclusive_limit
    text = f"performance gate attempt {rec.attempt}/{limit} inconclusive: {why}"
    s.log(journal.gate_entry(rec, "Inconclusive", check, s.now))  # every attempt, the last one decides
    if rec.attempt >= limit:
        s.set(performance_gate=replace(rec, outcome="Inconclusive", check=check, message=text, decided_at=s.now))
        s.actions.append(PhaseResult("performanceGate", st.version, st.stable_version, "Inconclusive", check, text,
                                     {}))
        s.notify("PerformanceGateFailed", reason="PerformanceGateInconclusive", message=text, check=check)
        roll_back(s, "PerformanceGateInconclusive", text, check=check)
        return
    retry = s.now + s.policy.interval
    s.set(performance_gate=PerformanceGateRecord(st.version, rec.attempt + 1, retry, message=text))
    s.hold("PerformanceGateInconclusive", f"{text}; attempt {rec.attempt + 1} at {format_time(retry)}")


__all__ = ["GRACE_SECONDS", "LoadTest", "LoadTestResult", "enter", "judge", "numbers", "progress",
           "timeout_seconds"]
