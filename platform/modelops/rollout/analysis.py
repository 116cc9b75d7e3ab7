"""Canary analysis: checks over metrics read through a small `MetricProvider` interface.

A provider answers a query with a number or `Inconclusive(reason)`; it never raises for a
missing metric, an unreachable server or a NaN. `analyse()` turns the answers into one
`AnalysisResult`: Passed, Failed (a threshold was crossed: the deciding check says which) or
Inconclusive (no data, NaN, provider error, too few requests). Inconclusive never counts as a
pass.

Queries are values, so that the same checks run against Prometheus (`PrometheusProvider`,
PromQL) and against predictors' own `/metrics` (`ScrapeProvider`, local mode). They are written
against the predictor's metrics contract (`modelops.serving.metrics`):

- `modelops_predictor_requests_total{model, version, protocol, code}` (counter; `code` is the
  HTTP status, gRPC answers included: 200, 4xx for a refused request, 5xx for a failure)
- `modelops_predictor_request_seconds_bucket/_sum/_count{model, version, protocol}` (histogram)
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import Enum
from typing import Mapping, Protocol, Union

from ..deployment.spec import AnalysisSpec
from .state import format_time

REQUESTS_METRIC = "modelops_predictor_requests_total"
LATENCY_METRIC = "modelops_predictor_request_seconds"


# Checks that count what was measured: while one is inconclusive (too few), nothing else decides.
COUNT_CHECKS = frozenset({"requests", "comparisons"})


class Outcome(str, Enum):
    PASSED = "Passed"
    FAILED = "Failed"
    INCONCLUSIVE = "Inconclusive"
    SKIPPED = "Skipped"


@dataclass(frozen=True)
class Inconclusive:
    """A query that gave no usable number, and why."""

    reason: str


Value = Union[float, Inconclusive]


# --- queries ---------------------------------------------------------------------------------
def _labels(selector: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(selector.items()))


@dataclass(frozen=True)
class RequestCount:
    """Requests answered in the last `window` seconds (any code)."""

    selector: tuple[tuple[str, str], ...]  # label matchers: model, version, ...
    window: float


@dataclass(frozen=True)
class SuccessRate:
    """Requests answered without a 5xx, as a fraction of all requests, over the window."""

    selector: tuple[tuple[str, str], ...]
    window: float


@dataclass(frozen=True)
class ClientErrorRate:
    """Requests answered with a 4xx (the request was refused), as a fraction of all requests."""

    selector: tuple[tuple[str, str], ...]
    window: float


@dataclass(frozen=True)
class LatencyQuantile:
    """The q-quantile of request latency in seconds over the window (from the histogram)."""

    selector: tuple[tuple[str, str], ...]
    window: float
    q: float = 0.99


@dataclass(frozen=True)
class PromQL:
    """A user's PromQL expression that must give a single number."""

    text: str


Query = Union[RequestCount, SuccessRate, ClientErrorRate, LatencyQuantile, PromQL]


class MetricProvider(Protocol):
    def query(self, q: Query) -> Value:
        """A number, or `Inconclusive(reason)`; never raises for missing data or a dead server."""


def usable(value: Value) -> Value:
    """NaN and infinities are inconclusive (e.g. 0/0 when nothing was requested)."""
    if isinstance(value, Inconclusive):
        return value
    if value is None or math.isnan(value) or math.isinf(value):
        return Inconclusive(f"the metric is {value} (no data in the window)")
    return float(value)


# --- results ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckResult:
    name: str
    outcome: Outcome
    value: float | None = None
    message: str = ""
    stable: float | None = None  # the stable version's value, for a check against it (the report shows both)

    def to_status(self) -> dict:
        out: dict = {"name": self.name, "outcome": self.outcome.value, "message": self.message}
        if self.value is not None:
            out["value"] = self.value
        if self.stable is not None:
            out["stable"] = self.stable
        return out


@dataclass(frozen=True)
class AnalysisResult:
    """One analysis of one canary version over one window."""

    version: str
    at: datetime
    outcome: Outcome
    checks: tuple[CheckResult, ...] = ()

    @property
    def deciding(self) -> CheckResult | None:
        """The check that decided a Failed or Inconclusive outcome (the first of its kind)."""
        if self.outcome == Outcome.PASSED:
            return None
        if self.outcome == Outcome.INCONCLUSIVE:
            requests = next((c for c in self.checks if c.name in COUNT_CHECKS
                             and c.outcome == Outcome.INCONCLUSIVE), None)
            if requests is not None:
                return requests
        return next((c for c in self.checks if c.outcome == self.outcome), None)

    @property
    def message(self) -> str:
        d = self.deciding
        if d is None:
            return f"all {len([c for c in self.checks if c.outcome == Outcome.PASSED])} checks passed"
        return f"{d.name}: {d.message}"

    def to_status(self) -> dict:
        d = self.deciding
        out = {"version": self.version, "at": format_time(self.at), "outcome": self.outcome.value,
               "message": self.message[:1024], "checks": [c.to_status() for c in self.checks]}
        if d is not None:
            out["check"] = d.name
        return out


def combine(version: str, at: datetime, checks: list[CheckResult]) -> AnalysisResult:
    """Failed if any check failed; else Inconclusive if too few requests or any check was; else Passed."""
    outcomes = {c.outcome for c in checks}
    if Outcome.FAILED in outcomes and not any(
            c.name in COUNT_CHECKS and c.outcome == Outcome.INCONCLUSIVE for c in checks):
        outcome = Outcome.FAILED
    elif Outcome.INCONCLUSIVE in outcomes or Outcome.FAILED in outcomes:
        outcome = Outcome.INCONCLUSIVE  # too few requests: nothing the other checks say decides
    else:
        outcome = Outcome.PASSED
    return AnalysisResult(version=version, at=at, outcome=outcome, checks=tuple(checks))


# --- the checks ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """What is analysed: the served model name, the canary and stable versions, the window."""

    model: str
    version: str
    stable_version: str | None
    window: float  # seconds
    weight: int  # canary traffic percent (at 100 the stable takes no traffic)
    namespace: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)  # extra matchers (e.g. namespace)

    def selector(self, version: str) -> tuple[tuple[str, str], ...]:
        return _labels({**self.labels, "model": self.model, "version": version})


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _threshold(name: str, value: Value, *, lo: float | None = None, hi: float | None = None,
               unit: str = "") -> CheckResult:
    value = usable(value)
    if isinstance(value, Inconclusive):
        return CheckResult(name, Outcome.INCONCLUSIVE, None, value.reason)
    if lo is not None and value < lo:
        return CheckResult(name, Outcome.FAILED, value, f"{_fmt(value)}{unit} < min {_fmt(lo)}{unit}")
    if hi is not None and value > hi:
        return CheckResult(name, Outcome.FAILED, value, f"{_fmt(value)}{unit} > max {_fmt(hi)}{unit}")
    bounds = " ".join(x for x in (lo is not None and f">= {_fmt(lo)}{unit}",
                                  hi is not None and f"<= {_fmt(hi)}{unit}") if x)
    return CheckResult(name, Outcome.PASSED, value, f"{_fmt(value)}{unit} {bounds}".strip())


def _vs_stable(target: Target) -> str | None:
    """Why a comparison with the stable version is impossible, or None."""
    if not target.stable_version:
        return "no stable version to compare with"
    if target.weight >= 100:
        return "the stable version takes no traffic while the canary has 100%"
    return None


def render(query: str, target: Target) -> str:
    """A user PromQL check with $model, $version, $stable_version, $namespace, $window filled in."""
    return string.Template(query).safe_substitute(
        model=target.model, version=target.version, stable_version=target.stable_version or "",
        namespace=target.namespace, window=f"{int(max(1, round(target.window)))}s")


def analyse(spec: AnalysisSpec, provider: MetricProvider, target: Target, now: datetime) -> AnalysisResult:
    """Run every configured check for `target.version` and combine them."""
    checks: list[CheckResult] = []
    canary = target.selector(target.version)
    stable = target.selector(target.stable_version) if target.stable_version else None
    skip = _vs_stable(target)

    count = usable(provider.query(RequestCount(canary, target.window)))
    if isinstance(count, Inconclusive):
        checks.append(CheckResult("requests", Outcome.INCONCLUSIVE, None, count.reason))
    elif count < max(spec.min_requests, 1e-9):
        checks.append(CheckResult("requests", Outcome.INCONCLUSIVE, count,
                                  f"{_fmt(count)} requests < minRequests {spec.min_requests}"))
    else:
        checks.append(CheckResult("requests", Outcome.PASSED, count,
                                  f"{_fmt(count)} requests >= minRequests {spec.min_requests}"))

    if spec.success_rate_min is not None and spec.success_rate_min > 0 or spec.success_rate_max_drop is not None:
        rate = usable(provider.query(SuccessRate(canary, target.window)))
        if spec.success_rate_min is not None and spec.success_rate_min > 0:
            checks.append(_threshold("successRate", rate, lo=spec.success_rate_min))
        if spec.success_rate_max_drop is not None:
            if skip:
                checks.append(CheckResult("successRateVsStable", Outcome.SKIPPED, None, skip))
            else:
                base = usable(provider.query(SuccessRate(stable, target.window)))
                if isinstance(base, Inconclusive):
                    checks.append(CheckResult("successRateVsStable", Outcome.INCONCLUSIVE, None,
                                              f"stable v{target.stable_version}: {base.reason}"))
                else:
                    checks.append(replace(_threshold("successRateVsStable", rate,
                                                     lo=base - spec.success_rate_max_drop), stable=base))

    if spec.p99_latency_ms_max is not None or spec.p99_latency_max_ratio is not None:
        p99 = usable(provider.query(LatencyQuantile(canary, target.window, 0.99)))
        p99_ms = p99 if isinstance(p99, Inconclusive) else p99 * 1000.0
        if spec.p99_latency_ms_max is not None:
            checks.append(_threshold("p99LatencyMs", p99_ms, hi=spec.p99_latency_ms_max, unit="ms"))
        if spec.p99_latency_max_ratio is not None:
            if skip:
                checks.append(CheckResult("p99LatencyVsStable", Outcome.SKIPPED, None, skip))
            else:
                base = usable(provider.query(LatencyQuantile(stable, target.window, 0.99)))
                if isinstance(base, Inconclusive):
                    checks.append(CheckResult("p99LatencyVsStable", Outcome.INCONCLUSIVE, None,
                                              f"stable v{target.stable_version}: {base.reason}"))
                else:
                    limit = base * 1000.0 * spec.p99_latency_max_ratio
                    checks.append(replace(_threshold("p99LatencyVsStable", p99_ms, hi=limit, unit="ms"),
                                          stable=base * 1000.0))

    if spec.client_errors_max_increase is not None and spec.client_errors_max_increase < 1:
        checks.append(_client_errors_vs_stable(spec, provider, target, count, skip))

    for check in spec.checks:
        value = provider.query(PromQL(render(check.query, target)))
        checks.append(_threshold(check.name, value, lo=check.min, hi=check.max))
    return combine(target.version, now, checks)


def _client_errors_vs_stable(spec: AnalysisSpec, provider: MetricProvider, target: Target, count: Value,
                             skip: str | None) -> CheckResult:
    """`clientErrorsVsStable`: the canary's share of 4xx answers may exceed the stable version's,
    over the same window, by at most `clientErrors.maxIncrease`. A request the serving version
    accepts and the canary refuses is the canary's failure, not the client's."""
    name = "clientErrorsVsStable"
    if skip:
        return CheckResult(name, Outcome.SKIPPED, None, skip)
    need = max(spec.min_requests, 1)
    stable_sel = target.selector(target.stable_version)
    for who, n in ((f"v{target.version}", count),
                   (f"stable v{target.stable_version}", usable(provider.query(RequestCount(stable_sel, target.window))))):
        if isinstance(n, Inconclusive):
            return CheckResult(name, Outcome.INCONCLUSIVE, None, f"{who}: {n.reason}")
        if n < need:
            return CheckResult(name, Outcome.INCONCLUSIVE, None, f"{who}: {_fmt(n)} requests < minRequests {need}")
    mine = usable(provider.query(ClientErrorRate(target.selector(target.version), target.window)))
    base = usable(provider.query(ClientErrorRate(stable_sel, target.window)))
    for who, v in ((f"v{target.version}", mine), (f"stable v{target.stable_version}", base)):
        if isinstance(v, Inconclusive):
            return CheckResult(name, Outcome.INCONCLUSIVE, None, f"{who}: {v.reason}")
    bound = spec.client_errors_max_increase
    rise = mine - base
    text = (f"4xx share {_fmt(mine)} vs stable v{target.stable_version} {_fmt(base)} "
            f"({'+' if rise >= 0 else ''}{_fmt(rise)}")
    if rise > bound + 1e-12:
        return CheckResult(name, Outcome.FAILED, rise, f"{text} > max +{_fmt(bound)})")
    return CheckResult(name, Outcome.PASSED, rise, f"{text} <= max +{_fmt(bound)})")
