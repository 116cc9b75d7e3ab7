"""The shadow phase: the candidate's answers compared with the stable version's on mirrored requests.

Before the first traffic step (after the performance gate, when there is one) the stable
predictor copies `spec.rollout.shadow.percent` of its requests to the candidate, asynchronously;
clients only ever get the stable's answers. It compares each pair and exports (labels `model`,
`version` = the stable, `candidate`):

- `modelops_shadow_comparisons_total{outcome="agree"|"disagree"}` (one per mirrored request),
- `modelops_shadow_abs_diff` / `modelops_shadow_rel_diff` histograms (max difference of a request),
- `modelops_shadow_cosine` histogram (min cosine similarity over a request's rows, vector outputs),
- `modelops_shadow_mirrored_total{result="sent"|"dropped"|"failed"}`.

The checks (`analyse`), over the phase so far (cumulative since it began):
- `comparisons`: at least `minRequests` compared requests, else inconclusive (nothing else decides);
- `agreement`: agree / (agree + disagree) >= `checks.agreement.min` (0 turns it off);
- `maxAbsDiff`: the `checks.maxAbsDiff.quantile` of the per-request max |difference| <= `max`
  (no `max`: reported, not judged);
- `worstAbsDiff`: the largest per-request difference (the histogram's 1.0 quantile, to its bucket
  bound): reported, not judged;
- `cosine` (only with `checks.cosine`): the (1 - quantile) low quantile of the per-request min
  cosine >= `checks.cosine.min`.
The phase (`progress`) is analysed every interval: Passed starts the canary steps; Failed rolls the
candidate back before any weight moved; inconclusive holds until `maxDuration`, then rolls it back
(reason ShadowInconclusive: a candidate that could not be judged never gets traffic).
During the canary steps the same checks join each step's analysis over the step's interval
(`step_checks`): a step fails on disagreement too. There, too few comparisons (or the 100% step,
where the stable takes no traffic and nothing is mirrored) leaves them Skipped, not inconclusive.
Mirroring stops when the rollout ends (`mirror` is None once it is promoted or rolled back).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from ..deployment.spec import ShadowSpec
from .actions import Analyse, PhaseResult, RolloutPolicy
from .analysis import (AnalysisResult, CheckResult, Inconclusive, MetricProvider, Outcome, Target, _fmt, _threshold,
                       combine, usable)
from .state import Phase, RolloutState, ShadowRecord, format_time, utc
from .stepping import Step, begin_traffic, roll_back

COMPARISONS_METRIC = "modelops_shadow_comparisons_total"
MIRRORED_METRIC = "modelops_shadow_mirrored_total"
HISTOGRAMS = {"abs_diff": "modelops_shadow_abs_diff", "rel_diff": "modelops_shadow_rel_diff",
              "cosine": "modelops_shadow_cosine"}
CHECKS = ("comparisons", "agreement", "maxAbsDiff", "worstAbsDiff", "cosine")


# --- queries (answered by PrometheusProvider and ScrapeProvider) ------------------------------
@dataclass(frozen=True)
class ComparisonCount:
    """Compared requests in the window; with `outcome` only those (0 when none yet)."""

    selector: tuple[tuple[str, str], ...]  # model, version (the stable), candidate, ...
    window: float
    outcome: str | None = None  # agree | disagree


@dataclass(frozen=True)
class ShadowQuantile:
    """The q-quantile of one comparison histogram over the window (`metric`: a HISTOGRAMS key)."""

    selector: tuple[tuple[str, str], ...]
    window: float
    metric: str
    q: float


def selector(target: Target) -> tuple[tuple[str, str], ...]:
    """The stable predictor's comparison series for this candidate."""
    return tuple(sorted({**dict(target.selector(target.stable_version or "")), "candidate": target.version}.items()))


# --- the checks ------------------------------------------------------------------------------
def _checks(spec: ShadowSpec, provider: MetricProvider, target: Target, *, in_step: bool) -> list[CheckResult]:
    sel, w = selector(target), target.window
    skip = None
    if not target.stable_version:
        skip = "no stable version to compare with"
    elif target.weight >= 100:
        skip = "the stable version takes no traffic at 100%: nothing is mirrored"
    count = usable(provider.query(ComparisonCount(sel, w))) if skip is None else Inconclusive(skip)
    need = spec.min_requests
    if isinstance(count, Inconclusive) or count < need:
        why = count.reason if isinstance(count, Inconclusive) else f"{_fmt(count)} comparisons < minRequests {need}"
        value = None if isinstance(count, Inconclusive) else count
        if in_step:  # a step is judged by its own checks; too few comparisons leave these out
            return [CheckResult(name, Outcome.SKIPPED, value if name == "comparisons" else None,
                                f"{why}: not judged in this interval") for name in CHECKS]
        return [CheckResult("comparisons", Outcome.INCONCLUSIVE, value, why)]
    checks = [CheckResult("comparisons", Outcome.PASSED, count, f"{_fmt(count)} comparisons >= minRequests {need}")]
    if spec.agreement_min > 0:
        agree = usable(provider.query(ComparisonCount(sel, w, "agree")))
        share = agree if isinstance(agree, Inconclusive) else min(1.0, agree / count)
        checks.append(_threshold("agreement", share, lo=spec.agreement_min))
    q = spec.max_abs_diff_quantile
    diff = usable(provider.query(ShadowQuantile(sel, w, "abs_diff", q)))
    if spec.max_abs_diff_max is not None:
        checks.append(_threshold("maxAbsDiff", diff, hi=spec.max_abs_diff_max))
    else:
        checks.append(CheckResult("maxAbsDiff", Outcome.SKIPPED, None if isinstance(diff, Inconclusive) else diff,
                                  f"p{q * 100:g} {diff.reason if isinstance(diff, Inconclusive) else _fmt(diff)}"
                                  " (no checks.maxAbsDiff.max: reported, not judged)"))
    worst = usable(provider.query(ShadowQuantile(sel, w, "abs_diff", 1.0)))
    checks.append(CheckResult("worstAbsDiff", Outcome.SKIPPED, None if isinstance(worst, Inconclusive) else worst,
                              "the largest difference, to the histogram's bucket bound (reported, not judged)"))
    if spec.cosine_min is not None:
        low = round(1.0 - q, 10)
        checks.append(_threshold("cosine", usable(provider.query(ShadowQuantile(sel, w, "cosine", low))),
                                 lo=spec.cosine_min))
    return checks


def analyse(spec: ShadowSpec, provider: MetricProvider, target: Target, now: datetime) -> AnalysisResult:
    """The shadow phase's analysis of `target.version` (weight 0) over `target.window`."""
    return combine(target.version, now, _checks(spec, provider, target, in_step=False))


def step_checks(result: AnalysisResult, spec: ShadowSpec, provider: MetricProvider, target: Target) -> AnalysisResult:
    """A canary step's analysis with the shadow checks over the same interval added."""
    return combine(result.version, result.at, list(result.checks) + _checks(spec, provider, target, in_step=True))


def values(result: AnalysisResult | dict | None) -> dict:
    """{comparisons, agreement, maxAbsDiff, worstAbsDiff, cosine} measured by an analysis (what the status,
    the history and the MLflow tags show)."""
    checks = result.get("checks", []) if isinstance(result, dict) else (result.checks if result else ())
    out = {}
    for c in checks:
        name, value = (c.get("name"), c.get("value")) if isinstance(c, dict) else (c.name, c.value)
        if name in CHECKS and value is not None:
            out[name] = value
    return out


# --- what the stable predictor is told --------------------------------------------------------
@dataclass(frozen=True)
class Mirror:
    """Mirroring wanted from the stable version's predictor to the candidate's."""

    candidate: str
    stable: str
    percent: int
    queue_size: int = 64
    timeout_ms: int = 2000
    rtol: float = 1e-3
    atol: float = 1e-3

    def to_config(self, candidate_url: str, model: str) -> dict:
        """The mirror configuration file the stable predictor watches (the issue-16 contract)."""
        return {"candidate": {"url": candidate_url, "model": model, "version": self.candidate},
                "percent": self.percent, "queueSize": self.queue_size, "timeoutMs": self.timeout_ms,
                "tolerance": {"rtol": self.rtol, "atol": self.atol}}


def mirror(state: RolloutState, policy: RolloutPolicy) -> Mirror | None:
    """What the stable predictor should mirror now (None: nothing). Apply it on every pass where
    shadow is configured, like the traffic (idempotent)."""
    if policy.shadow is None or not state.mirroring:
        return None
    return Mirror(candidate=state.version, stable=state.stable_version, percent=state.shadow.percent)


# --- the phase (engine) ----------------------------------------------------------------------
def enter(s: Step) -> None:
    st = s.state
    spec = s.policy.shadow
    s.set(phase=Phase.SHADOW, weight=0, step=0, gate=None, shadow=ShadowRecord(st.version, s.now, spec.percent),
          next_analysis_at=s.now + s.policy.interval, reason="Shadow",
          message=f"v{st.version} in shadow: {spec.percent}% of stable v{st.stable_version}'s requests mirrored "
                  f"to it, its answers compared (clients get v{st.stable_version}'s)")
    s.notify("ShadowStarted", reason="ShadowStarted", message=s.state.message)


def progress(s: Step, obs) -> None:
    """One pass of the shadow phase (the state is in phase Shadow)."""
    st = s.state
    spec = s.policy.shadow
    if spec is None:  # shadow removed from the spec meanwhile: on to the traffic steps
        begin_traffic(s)
        return
    sh = st.shadow
    if sh is None or sh.version != st.version:
        enter(s)
        return
    if obs.canary_ready is False:  # not serving: nothing to compare; the phase's clock starts once it serves
        s.set(shadow=replace(sh, started_at=s.now), next_analysis_at=s.now + s.policy.interval)
        s.hold("CanaryNotReady", f"v{st.version} is not ready yet: its shadow phase waits")
        return
    deadline = sh.started_at + timedelta(seconds=spec.max_duration_seconds)
    due = min(st.next_analysis_at or sh.started_at + s.policy.interval, deadline)
    if s.now < due:
        s.hold("Shadow", f"v{st.version} in shadow since {format_time(sh.started_at)}; next analysis at "
                         f"{format_time(due)}")
        return
    result = obs.analysis
    if result is None or result.version != st.version or utc(result.at) < due:
        window = max(1.0, (s.now - sh.started_at).total_seconds())
        s.actions.append(Analyse(st.version, st.stable_version, 0, window, shadow=True))
        s.hold("AnalysisDue", f"analysing v{st.version}'s shadow comparisons")
        return
    found = values(result)
    s.set(analysis=result.to_status(), last_analysis_at=s.now, next_analysis_at=s.now + s.policy.interval)
    s.log_analysis("shadow", result)
    deciding = result.deciding
    check = deciding.name if deciding else None
    if result.outcome == Outcome.PASSED:
        text = f"shadow passed: {_summary(found)}"
        _decide(s, sh, "Passed", None, text, found)
        s.notify("ShadowPassed", reason="ShadowPassed", message=f"v{st.version} {text}")
        begin_traffic(s)
    elif result.outcome == Outcome.FAILED:
        text = f"shadow failed: {result.message}"
        _decide(s, sh, "Failed", check, text, found)
        s.notify("ShadowFailed", reason="ShadowFailed", message=text, check=check)
        roll_back(s, "ShadowFailed", text, check=check)
    elif s.now >= deadline:
        text = (f"shadow inconclusive after maxDuration {spec.max_duration}: {result.message}")
        _decide(s, sh, "Inconclusive", check, text, found)
        s.notify("ShadowFailed", reason="ShadowInconclusive", message=text, check=check)
        roll_back(s, "ShadowInconclusive", text, check=check)
    else:
        s.set(shadow=replace(sh, values=found or sh.values, message=result.message))
        s.hold("ShadowInconclusive", f"v{st.version} in shadow: {result.message}; judged until "
                                     f"{format_time(deadline)} (maxDuration {spec.max_duration})")


def _decide(s: Step, sh: ShadowRecord, outcome: str, check: str | None, text: str, found: dict) -> None:
    st = s.state
    s.set(shadow=replace(sh, outcome=outcome, check=check, message=text, values=found or sh.values,
                         decided_at=s.now))
    s.actions.append(PhaseResult("shadow", st.version, st.stable_version, outcome, check, text, dict(found)))


def _summary(found: dict) -> str:
    parts = [f"{k} {_fmt(v)}" for k, v in found.items()]
    return ", ".join(parts) or "no numbers"


__all__ = ["CHECKS", "COMPARISONS_METRIC", "ComparisonCount", "HISTOGRAMS", "MIRRORED_METRIC", "Mirror",
           "ShadowQuantile", "analyse", "enter", "mirror", "progress", "selector", "step_checks", "values"]
